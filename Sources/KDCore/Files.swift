import Foundation

/// Opening the files kd reads: only regular files are accepted, so a directory is named as one
/// and a FIFO or a device (whose reads would block or never end) is refused instead of hanging.
public enum InputFile {
    /// An open descriptor of the regular file at `path` and its size; the caller closes it.
    public static func open(_ path: String) throws -> (descriptor: Int32, size: Int) {
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        let fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw KDError("\(path): \(code == ENOENT || code == ENOTDIR ? "no such file" : errorText(code))")
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let code = errno
            close(fd)
            throw KDError("\(path): cannot stat (\(errorText(code)))")
        }
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFREG else {
            close(fd)
            throw KDError("\(path): \(kind == S_IFDIR ? "is a directory" : "is not a regular file")")
        }
        // Reads of a regular file never block; clear the flag so later reads behave as usual.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return (fd, Int(info.st_size))
    }

    /// The whole contents of the regular file at `path`, refused when larger than `limit` bytes.
    public static func read(_ path: String, limit: Int = 1 << 32) throws -> Data {
        let (fd, size) = try open(path)
        defer { close(fd) }
        guard size <= limit else {
            throw KDError("\(path): \(formatBytes(size)) is larger than the \(formatBytes(limit)) kd reads from such a file")
        }
        var data = Data(count: size)
        var done = 0
        try data.withUnsafeMutableBytes { (buffer: UnsafeMutableRawBufferPointer) in
            while done < size {
                let n = Glibc.read(fd, buffer.baseAddress! + done, size - done)
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw KDError("\(path): cannot read (\(errorText(errno)))") }
                if n == 0 { break }  // shrank while being read
                done += n
            }
        }
        return done == size ? data : data.prefix(done)
    }

    /// Whether `path` exists (as anything).
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }
}

/// A file being written, through plain POSIX calls so that every failure (a full disk, a file-size
/// limit, a read-only file system) is one KDError naming the file and the system's reason.
public final class OutputFile {
    /// The file the errors name: the destination, when this is its temporary sibling.
    public let path: String
    private var fd: Int32

    /// Creates (or truncates) the file at `location`, which must not be anything but a regular
    /// file; errors name `path` (by default the same).
    public init(creating location: String, naming path: String? = nil) throws {
        self.path = path ?? location
        fd = Glibc.open(location, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw KDError("\(self.path): cannot create file (\(errorText(errno)))") }
        var info = stat()
        if fstat(fd, &info) == 0 && info.st_mode & S_IFMT != S_IFREG {
            Glibc.close(fd)
            fd = -1
            throw KDError("\(self.path): is not a regular file")
        }
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        let failure = writeAll(fd, bytes)
        guard failure == 0 else { throw KDError("\(path): cannot write (\(errorText(failure)))") }
    }

    public func write(_ data: Data) throws {
        try data.withUnsafeBytes { try write($0) }
    }

    /// fsync, then close.
    public func close() throws {
        guard fd >= 0 else { return }
        defer { fd = -1 }
        if fsync(fd) != 0 {
            let code = errno
            Glibc.close(fd)
            throw KDError("\(path): cannot flush to disk (\(errorText(code)))")
        }
        if Glibc.close(fd) != 0 { throw KDError("\(path): cannot close (\(errorText(errno)))") }
    }
}

/// Refuses to write a file at `path` when something other than a regular file is there: a
/// directory (which replacing would delete), a device, a FIFO or a socket.
public func requireReplaceableFile(_ path: String) throws {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    let kind = info.st_mode & S_IFMT
    if kind == S_IFREG || kind == S_IFLNK { return }
    throw KDError("\(path): \(kind == S_IFDIR ? "is a directory" : "is not a regular file"); kd only writes a file "
        + "where there is none or a regular file")
}

/// Refuses to replace `path` (as `--force` does) unless it is a directory kd could have written:
/// one that holds one of `markers` (a model's config.json, an adapter's adapter_config.json).
/// Never `/`, the home directory, the working directory, a symbolic link, a device or a file.
public func requireReplaceableDirectory(_ path: String, markers: [String] = ["config.json", "adapter_config.json"]) throws {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    let kind = info.st_mode & S_IFMT
    guard kind == S_IFDIR else {
        throw KDError("\(path): is \(kind == S_IFLNK ? "a symbolic link" : "not a directory"); --force replaces only a directory kd wrote")
    }
    let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().standardizedFileURL.path
    let protected = ["/", NSHomeDirectory(), FileManager.default.currentDirectoryPath, ProcessInfo.processInfo.environment["HOME"] ?? "/"]
        .map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().standardizedFileURL.path }
    guard !protected.contains(resolved) else {
        throw KDError("\(path): refusing to replace \(resolved == "/" ? "the root directory" : "the home or working directory")")
    }
    let held = markers.filter { FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent($0)) }
    guard !held.isEmpty else {
        throw KDError("\(path): holds no \(markers.joined(separator: " or ")), so kd did not write it; --force replaces only a directory kd wrote")
    }
}

/// Writes all of `bytes` to the open file `fd`: 0, or the errno that stopped it.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32 {
    guard let base = bytes.baseAddress else { return 0 }
    var offset = 0
    while offset < bytes.count {
        let written = Glibc.write(fd, base + offset, bytes.count - offset)
        if written < 0 {
            if errno == EINTR { continue }
            return errno
        }
        if written == 0 { return ENOSPC }
        offset += written
    }
    return 0
}

public func writeAll(_ fd: Int32, _ data: Data) -> Int32 {
    data.withUnsafeBytes { writeAll(fd, $0) }
}

/// The system's text for an errno, starting in lower case ("file too large").
public func errorText(_ code: Int32) -> String {
    let text = String(cString: strerror(code))
    return text.prefix(1).lowercased() + text.dropFirst()
}

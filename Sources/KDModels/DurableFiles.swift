import Foundation
import KDCore

// Files and directories that are either whole or absent: written beside their destination,
// flushed, then renamed into place, so a crash never leaves a half-written one. Every failure is
// a KDError naming the path and the system's reason ("file too large", "no space left on device").

/// Writes JSON (sorted keys, pretty) to `path` via a temporary file and a rename, flushed to disk.
public func writeJSON(_ object: Any, to path: String) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    try writeDurably(data, to: path)
}

/// Writes `data` beside `path`, fsyncs it and renames it into place.
public func writeDurably(_ data: Data, to path: String) throws {
    let temporary = path + ".tmp-\(getpid())"
    do {
        let file = try OutputFile(creating: temporary, naming: path)
        try file.write(data)
        try file.close()
    } catch {
        unlink(temporary)
        throw error
    }
    if rename(temporary, path) != 0 {
        let reason = errno
        unlink(temporary)
        throw KDError("\(path): cannot rename into place (\(errorText(reason)))")
    }
}

/// Builds the directory `path` in a temporary sibling with `build`, then puts it in place of
/// `path`; on failure the temporary is removed and `path` is left as it was. An existing `path` is
/// first renamed out of the way (see `retireDirectory`), so at every instant `path` is either the
/// old directory or the new one, whole, or absent. With `durable`, the new directory and its parent
/// are flushed to disk around the rename (the files in it are the builder's to flush).
/// Errors of the builder that are not KDErrors are reported as a failure to write `path`, and
/// KDErrors naming a file in the temporary directory name it at its destination.
public func writeDirectoryAtomically(_ path: String, durable: Bool = false, _ build: (String) throws -> Void) throws {
    let fm = FileManager.default
    let staging = path + ".tmp-\(getpid())"
    try? fm.removeItem(atPath: staging)
    do {
        do {
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        } catch {
            throw writeError(staging, error)
        }
        do {
            try reportingWrites(to: path) { try build(staging) }
        } catch let error as KDError {
            // Name what the user knows: the destination, not its temporary sibling.
            throw KDError(error.message.replacingOccurrences(of: staging, with: path))
        }
        if durable { try flushToDisk(staging) }
        var retired: String?
        if fm.fileExists(atPath: path) {
            let name = retiredName(path)
            try? fm.removeItem(atPath: name)
            guard rename(path, name) == 0 else {
                throw KDError("\(path): cannot move the old directory aside (\(errorText(errno)))")
            }
            retired = name
        }
        guard rename(staging, path) == 0 else {
            let reason = errno
            if let retired { rename(retired, path) }
            throw KDError("\(path): cannot rename into place (\(errorText(reason)))")
        }
        if durable { try flushToDisk((path as NSString).deletingLastPathComponent) }
        if let retired { try? fm.removeItem(atPath: retired) }
    } catch {
        try? fm.removeItem(atPath: staging)
        throw error
    }
}

/// `<parent>/.<name>.deleting-<pid>`: where `retireDirectory` moves a directory before deleting it.
public func retiredName(_ path: String) -> String {
    let parent = (path as NSString).deletingLastPathComponent
    return (parent as NSString).appendingPathComponent(".\((path as NSString).lastPathComponent).deleting-\(getpid())")
}

/// Removes the directory `path` without ever leaving it half deleted under its name: one rename
/// to `retiredName(path)`, flushed, then the deletion of the renamed tree.
public func retireDirectory(_ path: String) throws {
    let name = retiredName(path)
    try? FileManager.default.removeItem(atPath: name)
    guard rename(path, name) == 0 else {
        throw KDError("\(path): cannot move aside for deletion (\(errorText(errno)))")
    }
    try? flushToDisk((path as NSString).deletingLastPathComponent)
    do {
        try FileManager.default.removeItem(atPath: name)
    } catch {
        throw KDError("\(name): cannot delete (\(describeFileError(error)))")
    }
}

/// fsync of a file or a directory. A file system that cannot sync directories (EINVAL) is not an
/// error; a failed sync of data (EIO, ENOSPC, EDQUOT) is.
public func flushToDisk(_ path: String) throws {
    let fd = open(path.isEmpty ? "." : path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw KDError("\(path): cannot open to flush (\(errorText(errno)))") }
    defer { close(fd) }
    if fsync(fd) != 0 && errno != EINVAL && errno != EROFS {
        throw writeError(path, errno: errno)
    }
}

/// Runs `body`, reporting any error that is not already a KDError as a failure to write `path`.
public func reportingWrites<T>(to path: String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as KDError {
        throw error
    } catch {
        throw writeError(path, error)
    }
}

/// "<path>: cannot write (<reason>)".
public func writeError(_ path: String, errno code: Int32) -> KDError {
    KDError("\(path): cannot write (\(errorText(code)))")
}

public func writeError(_ path: String, _ error: Error) -> KDError {
    KDError("\(path): cannot write (\(describeFileError(error)))")
}

/// The errno text behind a Foundation or POSIX file error when there is one, else its description
/// on one line.
public func describeFileError(_ error: Error) -> String {
    if let posix = error as? POSIXError { return errorText(posix.code.rawValue) }
    let ns = error as NSError
    if ns.domain == NSPOSIXErrorDomain { return errorText(Int32(truncatingIfNeeded: ns.code)) }
    if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        return errorText(Int32(truncatingIfNeeded: underlying.code))
    }
    if ns.domain == NSCocoaErrorDomain && ns.code == CocoaError.fileWriteOutOfSpace.rawValue { return errorText(ENOSPC) }
    return ns.localizedDescription.split(whereSeparator: \.isNewline).joined(separator: " ")
}

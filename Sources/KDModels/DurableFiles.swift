import Foundation
import KDCore

// Files and directories that are either whole or absent: written beside their destination,
// flushed, then renamed into place, so a crash never leaves a half-written one.

/// Writes JSON (sorted keys, pretty) to `path` via a temporary file and a rename, flushed to disk.
public func writeJSON(_ object: Any, to path: String) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    try writeDurably(data, to: path)
}

/// Writes `data` beside `path`, fsyncs it and renames it into place.
public func writeDurably(_ data: Data, to path: String) throws {
    let temporary = path + ".tmp-\(getpid())"
    guard FileManager.default.createFile(atPath: temporary, contents: data) else {
        throw KDError("\(path): cannot write")
    }
    flushToDisk(temporary)
    if rename(temporary, path) != 0 {
        throw KDError("\(path): cannot rename into place (\(String(cString: strerror(errno))))")
    }
}

/// Builds the directory `path` in a temporary sibling with `build`, then replaces `path` with it in
/// one rename; on failure the temporary is removed and `path` is left as it was. With `durable`,
/// the new directory and its parent are flushed to disk around the rename (the files in it are
/// the builder's to flush).
public func writeDirectoryAtomically(_ path: String, durable: Bool = false, _ build: (String) throws -> Void) throws {
    let fm = FileManager.default
    let staging = path + ".tmp-\(getpid())"
    try? fm.removeItem(atPath: staging)
    do {
        try fm.createDirectory(atPath: staging, withIntermediateDirectories: true)
        try build(staging)
        if durable { flushToDisk(staging) }
        if fm.fileExists(atPath: path) { try fm.removeItem(atPath: path) }
        guard rename(staging, path) == 0 else {
            throw KDError("\(path): cannot rename into place (\(String(cString: strerror(errno))))")
        }
        if durable { flushToDisk((path as NSString).deletingLastPathComponent) }
    } catch {
        try? fm.removeItem(atPath: staging)
        throw error
    }
}

/// fsync of a file or a directory (best effort: a path that cannot be opened is skipped).
public func flushToDisk(_ path: String) {
    let fd = open(path.isEmpty ? "." : path, O_RDONLY)
    if fd >= 0 {
        fsync(fd)
        close(fd)
    }
}

import Foundation
import KDCore

/// A read-only memory mapping of a whole file; unmapped when the last tensor borrowing it is gone.
final class MappedFile: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let size: Int

    init(path: String) throws {
        let (fd, size) = try InputFile.open(path)
        defer { close(fd) }
        self.size = size
        guard size > 0 else {
            base = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 8)
            return
        }
        // Private and writable so a borrowed f32 tensor can have a mutable pointer type; kd never
        // writes through it, so no page is ever copied.
        guard let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
            throw KDError("\(path): cannot memory-map (\(errorText(errno)))")
        }
        base = mapped
    }

    deinit {
        if size > 0 { munmap(base, size) } else { base.deallocate() }
    }

    /// Drops the pages of `range` from memory once they have been copied out (they are re-read
    /// from the file if touched again), so a widened 16-bit checkpoint is not resident twice.
    func release(_ range: Range<Int>) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = range.lowerBound / page * page
        guard size > 0, range.upperBound > start else { return }
        madvise(base + start, range.upperBound - start, MADV_DONTNEED)
    }
}

/// One tensor's entry in a safetensors header.
public struct TensorInfo: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range within the file (already offset past the header).
    public let byteRange: Range<Int>
    /// Elements (the product of the shape, checked against overflow when the header was read).
    public let count: Int
}

/// A safetensors file: its header parsed and checked, its data memory-mapped.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]
    let file: MappedFile

    /// The largest header kd reads (the format's own readers stop at 100 MB as well).
    public static let maximumHeaderBytes = 100_000_000

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        (tensors, metadata) = try SafetensorsFile.parseHeader(
            UnsafeRawBufferPointer(start: file.base, count: file.size), path: path)
    }

    /// Reads and checks the header of a safetensors file held in `bytes`: every size computed with
    /// overflow checks, every tensor's bytes inside the file, and the data section covered exactly
    /// once (tensors contiguous, no gap, no overlap, nothing after the last), as the format requires.
    static func parseHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws
        -> (tensors: [String: TensorInfo], metadata: [String: String]) {
        let size = bytes.count
        guard size >= 8 else { throw KDError("\(path): truncated safetensors file (\(size) bytes, no header)") }
        let declared = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
        guard declared <= UInt64(size - 8) else {
            throw KDError("\(path): header length \(declared) runs past the end of the file (\(size) bytes): truncated or not safetensors")
        }
        let headerLength = Int(declared)
        guard headerLength <= maximumHeaderBytes else {
            throw KDError("\(path): header of \(headerLength) bytes is larger than the \(maximumHeaderBytes) a safetensors header may have")
        }
        let headerData = Data(bytes: bytes.baseAddress! + 8, count: headerLength)
        guard let header = try? JSONSerialization.jsonObject(with: headerData) as? [String: Any] else {
            throw KDError("\(path): header is not a JSON object: not a safetensors file")
        }
        let dataStart = 8 + headerLength, dataLength = size - dataStart
        var tensors: [String: TensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            let label = quoted(name)
            if name == "__metadata__" {
                guard let strings = value as? [String: String] else {
                    throw KDError("\(path): __metadata__ must map strings to strings")
                }
                metadata = strings
                continue
            }
            guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw KDError("\(path): tensor \(label): malformed header entry (dtype, shape and data_offsets are required)") }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw KDError("\(path): tensor \(label): unsupported dtype \(quoted(dtypeName)) (kd reads F32, BF16, F16)")
            }
            guard shape.allSatisfy({ $0 >= 0 }), let count = checkedProduct(shape),
                  case let (byteCount, overflow) = count.multipliedReportingOverflow(by: dtype.size), !overflow
            else { throw KDError("\(path): tensor \(label): shape \(shape) is not a valid size") }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, end >= begin, end - begin == byteCount else {
                throw KDError("\(path): tensor \(label): data_offsets \(offsets) do not hold \(shape) of \(dtypeName)")
            }
            guard end <= dataLength else {
                throw KDError("\(path): tensor \(label): data runs past the end of the file (\(size) bytes): the file is truncated")
            }
            tensors[name] = TensorInfo(name: name, dtype: dtype, shape: shape,
                                       byteRange: (dataStart + begin)..<(dataStart + end), count: count)
        }
        // Each byte of the data section belongs to exactly one tensor.
        var covered = dataStart
        for info in tensors.values.sorted(by: { ($0.byteRange.lowerBound, $0.byteRange.upperBound) < ($1.byteRange.lowerBound, $1.byteRange.upperBound) }) {
            if info.byteRange.lowerBound != covered {
                let problem = info.byteRange.lowerBound < covered ? "overlaps the tensor before it" : "leaves a gap before it"
                throw KDError("\(path): tensor \(quoted(info.name)): data_offsets \(problem): "
                    + "the header does not describe the data (wrong header length or offsets)")
            }
            covered = info.byteRange.upperBound
        }
        guard covered == size else {
            throw KDError("\(path): \(size - covered) bytes after the last tensor's data: "
                + "the header does not describe the data (wrong header length or offsets)")
        }
        return (tensors, metadata)
    }

    /// Loads a floating-point tensor onto `device` as f32, or as bf16 when `dtype` says so. A
    /// tensor already in that dtype and aligned for it borrows the mapped file (no copy, pages
    /// read as they are used); others are converted (bf16/f16 → f32 exactly, f32/f16 → bf16 with
    /// round-to-nearest-even) and the file's pages dropped.
    public func load(_ name: String, on device: Device, as dtype: DType = .f32) throws -> Tensor {
        guard let info = tensors[name] else { throw KDError("\(path): no tensor '\(name)'") }
        guard info.dtype.isFloatingPoint else {
            throw KDError("\(path): tensor '\(name)': dtype \(info.dtype.rawValue) is not a floating-point weight (kd reads F32, BF16, F16)")
        }
        guard dtype == .f32 || dtype == .bf16 else {
            throw KDError("\(path): tensor '\(name)': kd holds weights as F32 or BF16, not \(dtype.rawValue)")
        }
        let source = UnsafeRawPointer(file.base + info.byteRange.lowerBound)
        if info.dtype == dtype && Int(bitPattern: source) % dtype.size == 0 {
            let storage = try Storage(borrowing: UnsafeMutableRawPointer(mutating: source), bytes: info.count * dtype.size,
                                      owner: file, device: device)
            return Tensor(storage: storage, shape: info.shape, dtype: dtype)
        }
        let tensor = try Tensor(uninitializedShape: info.shape, dtype: dtype, on: device)
        if dtype == .f32 {
            Conversion.widen(source, dtype: info.dtype, into: tensor.data, count: info.count)
        } else {
            Conversion.narrowBF16(source, dtype: info.dtype, into: tensor.bytes.assumingMemoryBound(to: UInt16.self),
                                  count: info.count)
        }
        file.release(info.byteRange)
        return tensor
    }

    /// Calls `body` with the mapped bytes of a tensor of this file (no copy).
    public func withBytes<R>(of info: TensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: file.base + info.byteRange.lowerBound, count: info.byteRange.count))
    }

    /// Up to `count` bytes from the start, the middle and the end of the file: a cheap sample of
    /// its contents for a fingerprint.
    public func sample(bytes count: Int) -> Data {
        var data = Data()
        for start in [0, file.size / 2, file.size - count] {
            let from = Swift.max(0, Swift.min(start, file.size))
            data.append(Data(bytes: file.base + from, count: Swift.min(count, file.size - from)))
        }
        return data
    }

    /// The raw bytes of a tensor of any dtype (for integer tensors such as an attention mask).
    public func bytes(_ name: String) throws -> Data {
        guard let info = tensors[name] else { throw KDError("\(path): no tensor '\(name)'") }
        return Data(bytes: file.base + info.byteRange.lowerBound, count: info.byteRange.count)
    }
}

/// Writes a safetensors file tensor by tensor, without holding the file in memory. The file is
/// written beside its destination and renamed into place by `finish()`, so a reader never sees a
/// half-written file.
public final class SafetensorsWriter {
    public struct Entry {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public init(name: String, dtype: DType, shape: [Int]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
        }
        var byteCount: Int { shape.reduce(1, *) * dtype.size }
    }

    public let path: String
    private let temporaryPath: String
    private let handle: OutputFile
    private let entries: [Entry]
    private var next = 0
    private var writtenOfCurrent = 0
    private var scratch: [UInt16] = []

    /// Declares every tensor up front (the header comes first in the file); the data must then be
    /// written in the same order.
    public init(path: String, entries: [Entry], metadata: [String: String] = ["format": "pt"]) throws {
        self.path = path
        self.entries = entries
        try requireReplaceableFile(path)
        temporaryPath = path + ".tmp-\(getpid())"
        handle = try OutputFile(creating: temporaryPath, naming: path)
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for entry in entries {
            header[entry.name] = [
                "dtype": entry.dtype.rawValue, "shape": entry.shape, "data_offsets": [offset, offset + entry.byteCount],
            ] as [String: Any]
            offset += entry.byteCount
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var length = UInt64(json.count).littleEndian
        do {
            try handle.write(Data(bytes: &length, count: 8))
            try handle.write(json)
        } catch {
            discard()
            throw error
        }
    }

    /// Writes f32 values of the current tensor, converting to its declared dtype. A tensor may be
    /// written in several pieces; the next tensor starts once the current one is full.
    public func write(_ values: UnsafePointer<Float>, count: Int) throws {
        let entry = try current(accepting: count)
        switch entry.dtype {
        case .f32:
            try handle.write(UnsafeRawBufferPointer(start: values, count: count * 4))
        case .bf16, .f16:
            if scratch.count < count { scratch = [UInt16](repeating: 0, count: count) }
            try scratch.withUnsafeMutableBufferPointer { buffer in
                if entry.dtype == .bf16 {
                    Conversion.narrowBF16(values, into: buffer.baseAddress!, count: count)
                } else {
                    Conversion.narrowF16(values, into: buffer.baseAddress!, count: count)
                }
                try handle.write(UnsafeRawBufferPointer(start: buffer.baseAddress!, count: count * 2))
            }
        default:
            throw KDError("\(path): tensor '\(entry.name)': cannot write f32 values as \(entry.dtype.rawValue)")
        }
        advance(by: count)
    }

    public func write(_ tensor: Tensor) throws {
        try write(tensor.data, count: tensor.count)
    }

    /// Writes raw bytes already in the current tensor's dtype.
    public func write(raw bytes: Data) throws {
        let size = try current(accepting: 0).dtype.size
        _ = try current(accepting: bytes.count / size)
        try handle.write(bytes)
        advance(by: bytes.count / size)
    }

    private func current(accepting count: Int) throws -> Entry {
        while next < entries.count && entries[next].byteCount == 0 { next += 1 }
        guard next < entries.count else { throw KDError("\(path): more tensors written than declared") }
        let entry = entries[next]
        guard writtenOfCurrent + count <= entry.shape.reduce(1, *) else {
            throw KDError("\(path): tensor '\(entry.name)' declared as \(entry.shape), written with more values")
        }
        return entry
    }

    private func advance(by count: Int) {
        writtenOfCurrent += count
        if writtenOfCurrent == entries[next].shape.reduce(1, *) {
            next += 1
            writtenOfCurrent = 0
        }
    }

    /// Flushes to disk and renames the file into place.
    public func finish() throws {
        while next < entries.count && entries[next].shape.reduce(1, *) == 0 { next += 1 }
        guard next == entries.count else {
            throw KDError("\(path): \(entries.count - next) declared tensors were not written")
        }
        try handle.close()
        try requireReplaceableFile(path)
        guard rename(temporaryPath, path) == 0 else {
            throw KDError("\(path): cannot rename into place (\(errorText(errno)))")
        }
    }

    /// Abandons the file (on an error part-way).
    public func discard() {
        try? handle.close()
        try? FileManager.default.removeItem(atPath: temporaryPath)
    }
}

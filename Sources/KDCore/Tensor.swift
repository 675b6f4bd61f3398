import Foundation

/// The memory behind a tensor: bytes on one device. Pooled memory goes back to that device's
/// cache when the last tensor using it is gone; borrowed memory (a memory-mapped file) is only
/// accounted for.
public final class Storage: @unchecked Sendable {
    /// The memory, reached through `Tensor.bytes` (which checks who reaches it) or by `to(_:)`.
    let raw: UnsafeMutableRawPointer
    public let byteCount: Int
    public let device: Device
    private let backing: Backing

    enum Backing {
        case pooled(sizeClass: Int)
        /// A view into memory another object owns (a memory-mapped file); `owner` keeps it alive.
        case external(owner: AnyObject)
    }

    init(bytes: Int, device: Device) throws {
        let (raw, sizeClass) = try device.allocate(bytes: max(MemoryLayout<Float>.stride, bytes))
        self.raw = raw
        self.byteCount = bytes
        self.device = device
        self.backing = .pooled(sizeClass: sizeClass)
    }

    /// Memory `owner` keeps alive (a mapped file), counted against `device`'s budget while in use.
    public init(borrowing raw: UnsafeMutableRawPointer, bytes: Int, owner: AnyObject, device: Device) throws {
        try device.account(external: bytes)
        self.raw = raw
        self.byteCount = bytes
        self.device = device
        self.backing = .external(owner: owner)
    }

    deinit {
        switch backing {
        case .pooled(let sizeClass): device.release(raw, sizeClass: sizeClass)
        case .external: device.release(external: byteCount)
        }
    }
}

/// A dense, contiguous, row-major tensor on one device, of f32 (everything kd computes) or bf16
/// (frozen weights held as their checkpoint stores them; see `WeightProducts`).
///
/// `Tensor` is a value holding a reference to its storage: copies share the same memory, and
/// `reshaped` is free. Moving data to another device is always explicit: `to(_:)` within a
/// process, `send(to:tag:)` and `receive(from:tag:)` to and from a device of another process.
public struct Tensor: @unchecked Sendable {
    public let storage: Storage
    public let shape: [Int]
    public let dtype: DType

    public init(storage: Storage, shape: [Int], dtype: DType = .f32) {
        precondition(dtype == .f32 || dtype == .bf16, "tensors hold F32 or BF16, not \(dtype.rawValue)")
        precondition(shape.reduce(1, *) * dtype.size <= storage.byteCount, "shape \(shape) exceeds storage of \(storage.byteCount) bytes")
        self.storage = storage
        self.shape = shape
        self.dtype = dtype
    }

    /// An uninitialised tensor (its memory may hold a previous tensor's values).
    public init(uninitializedShape shape: [Int], dtype: DType = .f32, on device: Device) throws {
        guard let count = checkedProduct(shape), count <= Int.max / dtype.size else {
            throw KDError("\(device): a tensor of shape \(shape) is too large to allocate")
        }
        self.init(storage: try Storage(bytes: count * dtype.size, device: device), shape: shape, dtype: dtype)
    }

    public static func zeros(_ shape: [Int], on device: Device) throws -> Tensor {
        let tensor = try Tensor(uninitializedShape: shape, on: device)
        tensor.data.update(repeating: 0, count: tensor.count)
        return tensor
    }

    public init(_ values: [Float], shape: [Int], on device: Device) throws {
        guard values.count == shape.reduce(1, *) else {
            throw KDError("\(values.count) values do not fill a tensor of shape \(shape)")
        }
        try self.init(uninitializedShape: shape, on: device)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: values.count) }
    }

    public var device: Device { storage.device }
    /// The elements of an f32 tensor. A bf16 tensor has no f32 view: reaching for one is a
    /// programming error, caught even in kernels compiled without checks.
    public var data: UnsafeMutablePointer<Float> {
        if _slowPath(dtype != .f32) { fatalError("a \(dtype.rawValue) tensor of shape \(shape) read as F32") }
        return bytes.assumingMemoryBound(to: Float.self)
    }
    /// The elements' bytes, of any dtype. Work running on a device reaches only that device's
    /// memory (another device's tensors come across by `to(_:)`): reaching into another's is a
    /// programming error, caught even in kernels compiled without checks.
    public var bytes: UnsafeMutableRawPointer {
        if _slowPath(DeviceThread.onDeviceThread && !storage.device.backend.isCurrent) {
            fatalError("work on another device's thread read a tensor of shape \(shape) on \(storage.device)")
        }
        return storage.raw
    }
    public var count: Int { shape.reduce(1, *) }
    public var byteCount: Int { count * dtype.size }
    public var rank: Int { shape.count }

    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        return Tensor(storage: storage, shape: newShape, dtype: dtype)
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    public func toArray() -> [Float] { Array(buffer) }

    /// The only way across devices: a copy onto `target` (itself when it is already there).
    public func to(_ target: Device) throws -> Tensor {
        if target === device { return self }
        return try copy(on: target)
    }

    /// A fresh copy on the same device.
    public func clone() throws -> Tensor { try copy(on: device) }

    private func copy(on target: Device) throws -> Tensor {
        let copy = try Tensor(uninitializedShape: shape, dtype: dtype, on: target)
        copy.storage.raw.copyMemory(from: storage.raw, byteCount: byteCount)
        return copy
    }

    /// Sends the tensor's bytes to `peer`, a device of another process, whose process takes them
    /// with `receive(from:tag:)` (from this tensor's device) and the same `tag`.
    public func send(to peer: Device, tag: Int) throws {
        guard device.isLocal, !peer.isLocal else {
            throw KDError("send(to:): a tensor on \(device) goes to \(peer) by to(device), not by a message")
        }
        try device.run { try peer.backend.copyIn(UnsafeRawBufferPointer(start: bytes, count: byteCount), tag: tag) }
    }

    /// Fills the tensor with the bytes `peer`, a device of another process, sent it with
    /// `send(to:tag:)` and the same `tag`.
    public func receive(from peer: Device, tag: Int) throws {
        guard device.isLocal, !peer.isLocal else {
            throw KDError("receive(from:): a tensor on \(device) comes from \(peer) by to(device), not by a message")
        }
        try device.run { try peer.backend.copyOut(into: UnsafeMutableRawBufferPointer(start: bytes, count: byteCount), tag: tag) }
    }

    /// The values as f32 in a new tensor on the same device (a copy even when already f32).
    public func widened() throws -> Tensor {
        let out = try Tensor(uninitializedShape: shape, on: device)
        Conversion.widen(bytes, dtype: dtype, into: out.data, count: count)
        return out
    }

    /// The values in `target` dtype in a new tensor on the same device; f32 → bf16 rounds to
    /// nearest even, as torch's `.to(torch.bfloat16)`.
    public func converted(to target: DType) throws -> Tensor {
        if target == .f32 { return try widened() }
        precondition(target == .bf16, "tensors hold F32 or BF16")
        if dtype == .bf16 { return try clone() }
        let out = try Tensor(uninitializedShape: shape, dtype: .bf16, on: device)
        Conversion.narrowBF16(data, into: out.bytes.assumingMemoryBound(to: UInt16.self), count: count)
        return out
    }
}

/// Fails with a message naming both devices when an operation's tensors are not all on one device.
public func requireSameDevice(_ tensors: Tensor..., op: String) throws {
    guard let first = tensors.first else { return }
    for tensor in tensors.dropFirst() where tensor.device !== first.device {
        throw KDError(
            "\(op): tensors on different devices (\(first.device) and \(tensor.device)); "
                + "copy one across with to(device)")
    }
}

/// Fails with a message naming the operation when a tensor does not have the expected shape.
public func requireShape(_ tensor: Tensor, _ shape: [Int], _ what: String) throws {
    guard tensor.shape == shape else {
        throw KDError("\(what): expected shape \(shape), got \(tensor.shape)")
    }
}

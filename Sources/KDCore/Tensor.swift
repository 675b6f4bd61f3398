import Foundation

/// The memory behind a tensor. It belongs to one device and goes back to that device's cache
/// when the last tensor using it is gone.
public final class Storage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    public let device: Device
    private let backing: Backing

    enum Backing {
        case pooled(sizeClass: Int)
        /// A view into memory another object owns (a memory-mapped file); `owner` keeps it alive.
        case external(owner: AnyObject, bytes: Int)
    }

    init(count: Int, device: Device) throws {
        let (raw, sizeClass) = try device.allocate(bytes: max(1, count) * MemoryLayout<Float>.stride)
        self.pointer = raw.bindMemory(to: Float.self, capacity: max(1, count))
        self.count = count
        self.device = device
        self.backing = .pooled(sizeClass: sizeClass)
    }

    public init(borrowing pointer: UnsafeMutablePointer<Float>, count: Int, owner: AnyObject, device: Device) throws {
        let bytes = count * MemoryLayout<Float>.stride
        try device.account(external: bytes)
        self.pointer = pointer
        self.count = count
        self.device = device
        self.backing = .external(owner: owner, bytes: bytes)
    }

    deinit {
        switch backing {
        case .pooled(let sizeClass): device.release(UnsafeMutableRawPointer(pointer), sizeClass: sizeClass)
        case .external(_, let bytes): device.release(external: bytes)
        }
    }
}

/// A dense, contiguous, row-major f32 tensor on one device.
///
/// `Tensor` is a value holding a reference to its storage: copies share the same memory, and
/// `reshaped` is free. Moving data to another device is always an explicit `to(_:)`.
public struct Tensor: @unchecked Sendable {
    public let storage: Storage
    public let shape: [Int]

    public init(storage: Storage, shape: [Int]) {
        precondition(shape.reduce(1, *) <= storage.count, "shape \(shape) exceeds storage of \(storage.count)")
        self.storage = storage
        self.shape = shape
    }

    /// An uninitialised tensor (its memory may hold a previous tensor's values).
    public init(uninitializedShape shape: [Int], on device: Device) throws {
        guard let count = checkedProduct(shape), count <= Int.max / MemoryLayout<Float>.stride else {
            throw KDError("\(device): a tensor of shape \(shape) is too large to allocate")
        }
        self.init(storage: try Storage(count: count, device: device), shape: shape)
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
    public var data: UnsafeMutablePointer<Float> { storage.pointer }
    public var count: Int { shape.reduce(1, *) }
    public var byteCount: Int { count * MemoryLayout<Float>.stride }
    public var rank: Int { shape.count }

    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        return Tensor(storage: storage, shape: newShape)
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    public func toArray() -> [Float] { Array(buffer) }

    /// The only way across devices: a copy onto `target` (itself when it is already there).
    public func to(_ target: Device) throws -> Tensor {
        if target === device { return self }
        let copy = try Tensor(uninitializedShape: shape, on: target)
        copy.data.update(from: data, count: count)
        return copy
    }

    /// A fresh copy on the same device.
    public func clone() throws -> Tensor {
        let copy = try Tensor(uninitializedShape: shape, on: device)
        copy.data.update(from: data, count: count)
        return copy
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

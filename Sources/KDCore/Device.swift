import Foundation

/// A logical compute device: a memory budget with a caching allocator, and one execution
/// thread that runs the work placed on it. Tensors live on exactly one device.
///
/// The interface is deliberately narrow (allocate, release, run, receive a copy) so that a
/// later backend can put a device in another process or on another host.
public final class Device: @unchecked Sendable, CustomStringConvertible, Hashable {
    public let id: Int
    /// The logical budget in bytes; `nil` means unlimited.
    public let capacity: Int?

    private let lock = NSLock()
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var live = 0
    private var peak = 0
    private var cached = 0
    private let worker: DeviceThread

    public init(id: Int, capacity: Int? = nil) {
        self.id = id
        self.capacity = capacity
        self.worker = DeviceThread(name: "kd.device.\(id)")
    }

    deinit {
        worker.stop()
        for (_, pointers) in free { pointers.forEach { $0.deallocate() } }
    }

    public var description: String { "device \(id)" }
    public static func == (a: Device, b: Device) -> Bool { a === b }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }

    // MARK: Memory

    /// Bytes held by live tensors on this device.
    public var allocatedBytes: Int { lock.withLock { live } }
    /// The most bytes ever held by live tensors at once.
    public var peakBytes: Int { lock.withLock { peak } }
    /// Bytes of freed buffers kept for reuse (not counted against the budget).
    public var cachedBytes: Int { lock.withLock { cached } }

    /// Rounds a request up to a size class, so buffers of recurring shapes are reused exactly and
    /// buffers of nearby sizes share a class (classes are at most 1/8 apart above 4 KiB).
    static func sizeClass(_ bytes: Int) -> Int {
        if bytes <= 4096 { return max(64, (bytes + 63) & ~63) }
        let high = Int.bitWidth - (bytes - 1).leadingZeroBitCount  // 2^high >= bytes
        let step = 1 << (high - 4)
        return (bytes + step - 1) / step * step
    }

    /// Reserves `bytes` for a live tensor, failing with the numbers when the budget would be exceeded.
    func allocate(bytes: Int) throws -> (UnsafeMutableRawPointer, sizeClass: Int) {
        let size = Device.sizeClass(bytes)
        lock.lock()
        defer { lock.unlock() }
        try reserve(size, what: "allocating")
        if var list = free[size], let pointer = list.popLast() {
            free[size] = list
            cached -= size
            return (pointer, size)
        }
        if let capacity, live + cached > capacity { dropCache() }
        return (UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64), size)
    }

    /// Returns a buffer to the cache for reuse.
    func release(_ pointer: UnsafeMutableRawPointer, sizeClass: Int) {
        lock.withLock {
            live -= sizeClass
            free[sizeClass, default: []].append(pointer)
            cached += sizeClass
        }
    }

    /// Counts memory that the device holds but did not allocate (a memory-mapped checkpoint tensor).
    func account(external bytes: Int) throws {
        try lock.withLock { try reserve(bytes, what: "mapping") }
    }

    func release(external bytes: Int) {
        lock.withLock { live -= bytes }
    }

    private func reserve(_ bytes: Int, what: String) throws {
        if let capacity, live + bytes > capacity {
            throw KDError(
                "\(self): out of memory \(what) \(formatBytes(bytes)): \(formatBytes(live)) in use of its "
                    + "\(formatBytes(capacity)) budget")
        }
        live += bytes
        peak = max(peak, live)
    }

    /// Frees every cached buffer (the budget is close, or the caller is done with a phase).
    public func emptyCache() {
        lock.withLock { dropCache() }
    }

    private func dropCache() {
        for (_, pointers) in free { pointers.forEach { $0.deallocate() } }
        free.removeAll()
        cached = 0
    }

    /// Forgets the peak so that a phase can be measured on its own.
    public func resetPeak() {
        lock.withLock { peak = live }
    }

    // MARK: Execution

    /// Runs `body` on this device's thread and waits for it (inline when already there).
    public func run<T>(_ body: @escaping () throws -> T) throws -> T {
        if worker.isCurrent { return try body() }
        var result: Result<T, Error>?
        let done = DispatchSemaphore(value: 0)
        worker.submit {
            result = Result { try body() }
            done.signal()
        }
        done.wait()
        return try result!.get()
    }
}

/// One dedicated thread that runs submitted jobs in order.
final class DeviceThread: @unchecked Sendable {
    private let queue = JobQueue()
    private let thread: Thread

    /// Thread-specific slot holding the queue a device thread drains, to detect re-entry.
    private static let slot: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    init(name: String) {
        let queue = self.queue
        let marker = Int(bitPattern: Unmanaged.passUnretained(queue).toOpaque())
        thread = Thread {
            pthread_setspecific(DeviceThread.slot, UnsafeRawPointer(bitPattern: marker))
            queue.drain()
        }
        thread.name = name
        thread.stackSize = 16 << 20
        thread.start()
    }

    var isCurrent: Bool { pthread_getspecific(DeviceThread.slot) == Unmanaged.passUnretained(queue).toOpaque() }
    func submit(_ job: @escaping () -> Void) { queue.push(job) }
    func stop() { queue.close() }
}

private final class JobQueue: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var closed = false

    func push(_ job: @escaping () -> Void) {
        condition.withLock {
            jobs.append(job)
            condition.signal()
        }
    }

    func close() {
        condition.withLock {
            closed = true
            condition.signal()
        }
    }

    func drain() {
        while true {
            condition.lock()
            while jobs.isEmpty && !closed { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}

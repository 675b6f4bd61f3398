import Foundation

/// A logical compute device: a memory budget with a caching allocator, over a backend that holds
/// its memory and runs the work placed on it. Tensors live on exactly one device.
///
/// Work reaches a device's memory only through this interface: tensors are allocated on it, work
/// runs on it (`run`), and data crosses between devices by `Tensor.to(_:)` within a process and by
/// `Tensor.send(to:tag:)` / `receive(from:tag:)` between processes. The backend decides where the
/// device is: `ThreadBackend` (a thread of this process, the default) or a device owned by another
/// rank of an MPI job (`RankBackend`), of which this process knows only how to reach it.
public final class Device: @unchecked Sendable, CustomStringConvertible, Hashable {
    public let id: Int
    /// The logical budget in bytes; `nil` means unlimited.
    public let capacity: Int?
    public let backend: any DeviceBackend

    private let lock = NSLock()
    /// Freed buffers by size class, each with when it was freed (a count of releases).
    private var free: [Int: [(pointer: UnsafeMutableRawPointer, freedAt: Int)]] = [:]
    private var releases = 0
    private var live = 0
    private var peak = 0
    private var cached = 0

    /// A device of this process, with its own thread.
    public convenience init(id: Int, capacity: Int? = nil) {
        self.init(id: id, capacity: capacity, backend: ThreadBackend(name: "kd.device.\(id)"))
    }

    public init(id: Int, capacity: Int? = nil, backend: any DeviceBackend) {
        self.id = id
        self.capacity = capacity
        self.backend = backend
    }

    deinit {
        backend.stop()
        for (size, buffers) in free {
            buffers.forEach { backend.deallocate($0.pointer, bytes: size) }
        }
    }

    public var description: String { backend.location.map { "device \(id) (on \($0))" } ?? "device \(id)" }
    public static func == (a: Device, b: Device) -> Bool { a === b }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }

    /// Whether the device's memory is in this process.
    public var isLocal: Bool { backend.location == nil }

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
    /// A freed buffer of the same class is reused, else the smallest cached one up to twice the size.
    func allocate(bytes: Int) throws -> (UnsafeMutableRawPointer, sizeClass: Int) {
        let size = Device.sizeClass(bytes)
        lock.lock()
        defer { lock.unlock() }
        if let reuse = free[size] != nil ? size : free.keys.filter({ $0 > size && $0 <= 2 * size }).min(),
           capacity.map({ live + reuse <= $0 }) ?? true {
            try reserve(reuse, what: "allocating")
            let pointer = free[reuse]!.removeLast().pointer
            if free[reuse]!.isEmpty { free[reuse] = nil }
            cached -= reuse
            return (pointer, reuse)
        }
        try reserve(size, what: "allocating")
        if let capacity { evict(while: { live + cached > capacity }) }
        do {
            return (try backend.allocate(bytes: size, for: self), size)
        } catch {
            // The machine is full: the cache gives its memory back first.
            evict(while: { cached > 0 })
            do { return (try backend.allocate(bytes: size, for: self), size) } catch { live -= size; throw error }
        }
    }

    /// Returns a buffer to the cache for reuse. The cache keeps at most the device's peak of live
    /// bytes, giving back the buffers freed longest ago: batches of varying shapes would otherwise
    /// leave a buffer behind in every size class they touch.
    func release(_ pointer: UnsafeMutableRawPointer, sizeClass: Int) {
        lock.withLock {
            live -= sizeClass
            releases += 1
            free[sizeClass, default: []].append((pointer, releases))
            cached += sizeClass
            evict(while: { cached > peak })
        }
    }

    /// Frees cached buffers, oldest first (each class's list is in release order), while `condition` holds.
    private func evict(while condition: () -> Bool) {
        while condition(), let oldest = free.min(by: { $0.value[0].freedAt < $1.value[0].freedAt })?.key {
            backend.deallocate(free[oldest]!.removeFirst().pointer, bytes: oldest)
            if free[oldest]!.isEmpty { free[oldest] = nil }
            cached -= oldest
        }
    }

    /// Counts memory that the device holds but did not allocate (a memory-mapped checkpoint tensor).
    func account(external bytes: Int) throws {
        guard isLocal else { throw KDError("\(self): its memory is that rank's; it maps no file here") }
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

    // MARK: Execution

    /// Runs `body` where the device computes and waits for it (inline when already there).
    public func run<T>(_ body: @escaping () throws -> T) throws -> T {
        if backend.isCurrent { return try body() }
        var result: Result<T, Error>?
        try backend.run { result = Result { try body() } }
        return try result!.get()
    }
}

/// What a device is made of: the memory behind its tensors and the place where work on it runs.
/// `Device` keeps the budget and the cache of freed buffers on top.
public protocol DeviceBackend: AnyObject, Sendable {
    /// Where the device is, for messages: nil for this process, else e.g. "rank 3".
    var location: String? { get }
    /// `bytes` (a multiple of 64) of memory aligned to 64 for `device`'s tensors, or an error when
    /// the machine cannot hold it; and giving it back.
    func allocate(bytes: Int, for device: Device) throws -> UnsafeMutableRawPointer
    func deallocate(_ pointer: UnsafeMutableRawPointer, bytes: Int)
    /// Runs `job` where the device computes and returns once it has run.
    func run(_ job: @escaping () -> Void) throws
    /// Whether this thread is where the device computes.
    var isCurrent: Bool { get }
    /// Copies `bytes` of this process into the device's memory: the device's process takes them
    /// into a tensor there with the same `tag` (`Tensor.receive(from:tag:)`, naming the device
    /// they came from). `copyOut` is the other way. A device of this process needs neither, and
    /// refuses both: `Tensor.to(_:)` copies between memories of one process directly.
    func copyIn(_ bytes: UnsafeRawBufferPointer, tag: Int) throws
    func copyOut(into bytes: UnsafeMutableRawBufferPointer, tag: Int) throws
    /// Ends the device's work (its device is gone).
    func stop()
}

/// A device of this process: memory from the heap, counted against the machine's, and one thread
/// that runs the work placed on it in order.
public final class ThreadBackend: DeviceBackend, @unchecked Sendable {
    private let thread: DeviceThread

    public init(name: String) { thread = DeviceThread(name: name) }

    public var location: String? { nil }
    public var isCurrent: Bool { thread.isCurrent }
    public func stop() { thread.stop() }

    public func run(_ job: @escaping () -> Void) throws {
        let done = DispatchSemaphore(value: 0)
        thread.submit {
            job()
            done.signal()
        }
        done.wait()
    }

    public func allocate(bytes: Int, for device: Device) throws -> UnsafeMutableRawPointer {
        try Self.machineLock.withLock {
            guard Self.machineLive + bytes <= Self.machineMemory else {
                throw KDError("\(device): cannot allocate \(formatBytes(bytes)): with "
                    + "\(formatBytes(Self.machineLive)) already allocated it exceeds this machine's \(formatBytes(Self.machineMemory)) of memory")
            }
            Self.machineLive += bytes
        }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    public func deallocate(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        pointer.deallocate()
        Self.machineLock.withLock { Self.machineLive -= bytes }
    }

    public func copyIn(_ bytes: UnsafeRawBufferPointer, tag: Int) throws {
        throw KDError("a device of this process takes tensors by to(device), not by a message")
    }

    public func copyOut(into bytes: UnsafeMutableRawBufferPointer, tag: Int) throws {
        throw KDError("a device of this process gives tensors by to(device), not by a message")
    }

    // MARK: The machine's memory

    /// Bytes allocated by all devices of this process, against the machine's memory: whatever the
    /// budgets say, a request the machine cannot hold is an error, not a process killed later.
    nonisolated(unsafe) private static var machineLive = 0
    private static let machineLock = NSLock()

    /// The physical memory of this machine.
    public static let machineMemory: Int = {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        return pages > 0 && size > 0 ? pages * size : Int.max
    }()
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
    /// Whether this thread is some device's thread.
    static var onDeviceThread: Bool { pthread_getspecific(slot) != nil }
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

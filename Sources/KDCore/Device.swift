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
    /// Freed buffers by size class, each with when it was freed (a count of releases).
    private var free: [Int: [(pointer: UnsafeMutableRawPointer, freedAt: Int)]] = [:]
    private var releases = 0
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
        for (size, buffers) in free {
            buffers.forEach { $0.pointer.deallocate() }
            Device.releaseMachineMemory(size * buffers.count)
        }
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
            try Device.reserveMachineMemory(size, for: self)
        } catch {
            evict(while: { cached > 0 })
            do { try Device.reserveMachineMemory(size, for: self) } catch { live -= size; throw error }
        }
        return (UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64), size)
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
            free[oldest]!.removeFirst().pointer.deallocate()
            if free[oldest]!.isEmpty { free[oldest] = nil }
            cached -= oldest
            Device.releaseMachineMemory(oldest)
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

    private static func reserveMachineMemory(_ bytes: Int, for device: Device) throws {
        try machineLock.withLock {
            guard machineLive + bytes <= machineMemory else {
                throw KDError("\(device): cannot allocate \(formatBytes(bytes)): with \(formatBytes(machineLive)) already "
                    + "allocated it exceeds this machine's \(formatBytes(machineMemory)) of memory")
            }
            machineLive += bytes
        }
    }

    private static func releaseMachineMemory(_ bytes: Int) {
        machineLock.withLock { machineLive -= bytes }
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

import Foundation

/// xoshiro256** seeded through splitmix64: fast, good quality, and its whole state is four
/// words that a checkpoint can save and restore exactly.
public struct RandomGenerator: RandomNumberGenerator, Equatable, Sendable {
    private var s0, s1, s2, s3: UInt64

    public init(seed: UInt64) {
        var s = seed
        s0 = RandomGenerator.splitMix(&s)
        s1 = RandomGenerator.splitMix(&s)
        s2 = RandomGenerator.splitMix(&s)
        s3 = RandomGenerator.splitMix(&s)
    }

    /// The four state words, to save in a checkpoint.
    public var state: [UInt64] { [s0, s1, s2, s3] }

    /// A generator for an independent stream, derived from a seed and stream labels.
    public init(seed: UInt64, stream: UInt64...) {
        self.init(seed: seed, streams: stream)
    }

    public init(seed: UInt64, streams: [UInt64]) {
        var mixed = seed
        for label in streams { mixed = RandomGenerator.splitMixValue(mixed ^ RandomGenerator.splitMixValue(label)) }
        self.init(seed: mixed)
    }

    public init(state: [UInt64]) throws {
        guard state.count == 4, state.contains(where: { $0 != 0 }) else { throw KDError("invalid random generator state") }
        (s0, s1, s2, s3) = (state[0], state[1], state[2], state[3])
    }

    static func splitMix(_ x: inout UInt64) -> UInt64 {
        x &+= 0x9E37_79B9_7F4A_7C15
        return splitMixValue(x)
    }

    static func splitMixValue(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A stable 64-bit hash of a string (FNV-1a), for deriving streams from names.
    public static func hash(_ text: String) -> UInt64 {
        text.utf8.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01B3 }
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func nextUniform() -> Float {
        Float(next() >> 40) * (1.0 / 16_777_216.0)
    }

    /// A standard normal sample (Box–Muller; one of the pair is used so the stream stays simple).
    public mutating func nextNormal() -> Float {
        let u1 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
        let u2 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
        return Float((-2 * Foundation.log(1 - u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }

    /// Fills `count` values with N(0, std²), in parallel over fixed-size chunks whose streams
    /// depend only on (seed, stream, chunk), so the result does not depend on the thread count.
    public static func fillNormal(
        _ out: UnsafeMutablePointer<Float>, count: Int, std: Float, seed: UInt64, stream: UInt64
    ) {
        let chunk = 1 << 16
        let chunks = (count + chunk - 1) / chunk
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            var rng = RandomGenerator(seed: seed, stream: stream, UInt64(c))
            let start = c * chunk, end = min(count, start + chunk)
            var i = start
            // Both values of each Box–Muller pair, in f32 (init needs speed more than the last bit).
            while i < end {
                let u1 = Float(rng.next() >> 40) * (1.0 / 16_777_216.0)
                let u2 = Float(rng.next() >> 40) * (1.0 / 16_777_216.0)
                let radius = (-2 * Foundation.log(1 - u1)).squareRoot() * std
                let angle = 2 * Float.pi * u2
                out[i] = radius * Foundation.cos(angle)
                if i + 1 < end { out[i + 1] = radius * Foundation.sin(angle) }
                i += 2
            }
        }
    }
}

import Foundation
import Testing
import KDCore
import KDModels

/// f32 → bf16 narrowing (`teacher.dtype: bf16` on an f32 checkpoint) rounds as torch's
/// `.to(torch.bfloat16)`: the committed values of Scripts/make_bf16_fixtures.py (ties both ways,
/// overflow to infinity, subnormals, signed zeros, random bit patterns) bit for bit, NaN as NaN.
@Suite struct BF16RoundingTests {
    static let path = Fixtures.path("bf16", "rounding.safetensors")

    static func halves(_ tensor: Tensor) -> [UInt16] {
        Array(UnsafeBufferPointer(start: tensor.bytes.assumingMemoryBound(to: UInt16.self), count: tensor.count))
    }

    @Test func narrowingEqualsTorch() throws {
        let file = try SafetensorsFile(path: Self.path)
        let device = Device(id: 0)
        let expected = try file.bytes("bf16").withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
        #expect(expected.count > 4000)
        // Narrowed while loading, and from an f32 tensor in memory.
        let loaded = try file.load("f32", on: device, as: .bf16)
        let converted = try file.load("f32", on: device).converted(to: .bf16)
        #expect(Self.halves(loaded) == expected)
        #expect(Self.halves(converted) == expected)
        let nan = try file.load("nan_f32", on: device, as: .bf16).widened().toArray()
        #expect(nan.count == 2 && nan.allSatisfy(\.isNaN))
        // bf16 → f32 is exact: widening what torch rounded gives torch's values back.
        let widened = try file.load("bf16", on: device).toArray()
        let torchValues = try file.load("bf16", on: device, as: .bf16).widened().toArray()
        #expect(widened.map(\.bitPattern) == torchValues.map(\.bitPattern))
    }
}

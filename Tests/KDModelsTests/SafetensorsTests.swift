import Foundation
import Testing
import KDCore
import KDModels

@Suite struct SafetensorsTests {
    /// A tensor of every stored dtype loads with its values as f32 and as bf16. A 2-byte tensor
    /// first in the file leaves an f32 one unaligned, so the copying path is covered too.
    @Test(arguments: [DType.f32, .bf16, .f16])
    func loadsAsF32AndAsBF16(dtype: DType) throws {
        let (rows, cols) = (70, 131)
        // Multiples of 1/8 in ±16 are exact in all three formats.
        let values = (0..<(rows * cols)).map { Float(($0 * 37) % 257 - 128) / 8 }
        let path = (Fixtures.temporaryDirectory() as NSString).appendingPathComponent("matrix.safetensors")
        let writer = try SafetensorsWriter(path: path, entries: [
            .init(name: "pad", dtype: .bf16, shape: [1]), .init(name: "matrix", dtype: dtype, shape: [rows, cols]),
        ])
        try writer.write([Float(1)], count: 1)
        try writer.write(values, count: values.count)
        try writer.finish()

        let file = try SafetensorsFile(path: path)
        let device = Device(id: 0)
        let plain = try file.load("matrix", on: device).toArray()
        #expect(plain == values)
        let held = try file.load("matrix", on: device, as: .bf16)
        #expect(held.dtype == .bf16 && held.shape == [rows, cols] && held.byteCount == rows * cols * 2)
        #expect(try held.widened().toArray() == values)
        #expect(throws: KDError.self) { try file.load("matrix", on: device, as: .f16) }
    }
}

import Foundation
import Testing
import KDCore
import KDModels

@Suite struct SafetensorsTests {
    /// The transposing load (used for output projections) equals a plain load transposed, for every
    /// stored dtype, on a shape that is not a multiple of its tile. A 2-byte tensor first in the file
    /// leaves the f32 one unaligned, so the copying path is covered too.
    @Test(arguments: [DType.f32, .bf16, .f16])
    func transposedLoadEqualsLoadThenTranspose(dtype: DType) throws {
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
        let transposed = try file.loadTransposed("matrix", on: device)
        #expect(transposed.shape == [cols, rows])
        let expected = (0..<(cols * rows)).map { values[($0 % rows) * cols + $0 / rows] }
        #expect(transposed.toArray() == expected)
    }
}

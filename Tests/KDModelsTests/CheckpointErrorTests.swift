import Foundation
import Testing
import KDCore
import KDModels

/// Every malformed-checkpoint case ends in one KDError naming the file and the problem.
@Suite struct CheckpointErrorTests {
    /// A copy of a fixture checkpoint in a temporary directory, to break.
    static func copy(_ model: String = "dense-tied-gqa") throws -> String {
        let directory = Fixtures.temporaryDirectory()
        let target = (directory as NSString).appendingPathComponent(model)
        try FileManager.default.copyItem(atPath: Fixtures.path("forward", model), toPath: target)
        return target
    }

    /// Rewrites `model.safetensors` in `directory` after `edit` changes its (name, dtype, shape, values) list.
    static func rewrite(_ directory: String, edit: (inout [(String, DType, [Int], [Float])]) -> Void) throws {
        let path = (directory as NSString).appendingPathComponent("model.safetensors")
        let file = try SafetensorsFile(path: path)
        let device = Device(id: 0)
        var tensors = try file.tensors.keys.sorted().map { name -> (String, DType, [Int], [Float]) in
            let t = try file.load(name, on: device)
            return (name, DType.f32, t.shape, t.toArray())
        }
        edit(&tensors)
        let writer = try SafetensorsWriter(path: path, entries: tensors.map { .init(name: $0.0, dtype: $0.1, shape: $0.2) })
        for (_, dtype, _, values) in tensors {
            if dtype == .i64 {
                try writer.write(raw: values.map { Int64($0) }.withUnsafeBytes { Data($0) })
            } else {
                try values.withUnsafeBufferPointer { try writer.write($0.baseAddress!, count: values.count) }
            }
        }
        try writer.finish()
    }

    static func message(_ body: () throws -> Void) -> String {
        do {
            try body()
            return "no error"
        } catch let error as KDError {
            return error.message
        } catch {
            return "not a KDError: \(error)"
        }
    }

    static func load(_ directory: String) throws {
        _ = try CausalLM.load(try Checkpoint(directory: directory), on: try DeviceGroup.make(count: 1))
    }

    @Test func missingDirectoryAndConfig() throws {
        #expect(Self.message { try Self.load("/nonexistent/model") } == "/nonexistent/model: no such model directory")
        let dir = try Self.copy()
        try FileManager.default.removeItem(atPath: dir + "/config.json")
        #expect(Self.message { try Self.load(dir) }.hasPrefix("\(dir): no config.json"))
    }

    @Test func malformedConfig() throws {
        let dir = try Self.copy()
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(Self.message { try Self.load(dir) } == "\(dir)/config.json: not a JSON object")
        try Data(#"{"model_type": "llama"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(Self.message { try Self.load(dir) } == "\(dir)/config.json: unsupported model_type 'llama' (kd runs qwen3, qwen3_moe)")
        try Data(#"{"model_type": "qwen3", "vocab_size": 10}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(Self.message { try Self.load(dir) } == "\(dir)/config.json: missing key 'hidden_size'")
        try Data(#"{"model_type": "qwen3", "vocab_size": "many"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        #expect(Self.message { try Self.load(dir) } == "\(dir)/config.json: key 'vocab_size': expected a number")
    }

    @Test func truncatedFile() throws {
        let dir = try Self.copy()
        let path = dir + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count - 100).write(to: URL(fileURLWithPath: path))
        let message = Self.message { try Self.load(dir) }
        #expect(message.hasPrefix("\(path): tensor '"))
        #expect(message.hasSuffix("data runs past the end of the file (\(data.count - 100) bytes): the file is truncated"))
        try data.prefix(20).write(to: URL(fileURLWithPath: path))
        #expect(Self.message { try Self.load(dir) }.contains("runs past the end of the file (20 bytes): truncated or not safetensors"))
        try Data().write(to: URL(fileURLWithPath: path))
        #expect(Self.message { try Self.load(dir) } == "\(path): truncated safetensors file (0 bytes, no header)")
    }

    @Test func missingUnexpectedAndMisshapenTensors() throws {
        let dir = try Self.copy()
        let path = dir + "/model.safetensors"
        try Self.rewrite(dir) { $0.removeAll { $0.0 == "model.layers.1.mlp.up_proj.weight" } }
        #expect(Self.message { try Self.load(dir) } == "\(path): missing tensor 'model.layers.1.mlp.up_proj.weight'")

        let dir2 = try Self.copy()
        try Self.rewrite(dir2) { $0.append(("model.layers.0.extra.weight", .f32, [2], [1, 2])) }
        #expect(Self.message { try Self.load(dir2) } == "\(dir2)/model.safetensors: unexpected tensor 'model.layers.0.extra.weight'")

        let dir3 = try Self.copy()
        try Self.rewrite(dir3) { tensors in
            let i = tensors.firstIndex { $0.0 == "model.norm.weight" }!
            tensors[i] = (tensors[i].0, .f32, [8, 8], tensors[i].3)
        }
        #expect(Self.message { try Self.load(dir3) }
            == "\(dir3)/model.safetensors: tensor 'model.norm.weight' has shape [8, 8], config.json implies [64]")

        let dir4 = try Self.copy()
        try Self.rewrite(dir4) { tensors in
            let i = tensors.firstIndex { $0.0 == "model.norm.weight" }!
            tensors[i] = (tensors[i].0, .i64, [64], tensors[i].3)
        }
        #expect(Self.message { try Self.load(dir4) }
            == "\(dir4)/model.safetensors: tensor 'model.norm.weight' has unsupported dtype I64 (kd reads F32, BF16, F16)")

        // A tied model's file must not carry its own lm_head.
        let dir5 = try Self.copy()
        try Self.rewrite(dir5) { $0.append(("lm_head.weight", .f32, [1], [0])) }
        #expect(Self.message { try Self.load(dir5) }
            == "\(dir5)/model.safetensors: unexpected tensor 'lm_head.weight' (config.json has tie_word_embeddings: true)")
    }

    @Test func unknownDtypeInHeader() throws {
        let dir = try Self.copy()
        let path = dir + "/model.safetensors"
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        let header = String(decoding: data[8..<200], as: UTF8.self)
        let range = header.range(of: "\"F32\"")!
        let offset = 8 + header.utf8.distance(from: header.startIndex, to: range.lowerBound)
        data.replaceSubrange(offset..<(offset + 5), with: Data("\"F8Z\"".utf8))
        try data.write(to: URL(fileURLWithPath: path))
        #expect(Self.message { try Self.load(dir) }.contains("unsupported dtype 'F8Z' (kd reads F32, BF16, F16)"))
    }

    @Test func missingShardAndPickle() throws {
        let dir = try Self.copy("dense-mqa-headdim-sharded")
        try FileManager.default.removeItem(atPath: dir + "/model-00003-of-00011.safetensors")
        #expect(Self.message { try Self.load(dir) }
            == "\(dir)/model-00003-of-00011.safetensors: missing shard (listed in model.safetensors.index.json)")

        let pickle = try Self.copy()
        try FileManager.default.removeItem(atPath: pickle + "/model.safetensors")
        try Data("PK".utf8).write(to: URL(fileURLWithPath: pickle + "/pytorch_model.bin"))
        #expect(Self.message { try Self.load(pickle) }.hasPrefix(
            "\(pickle)/pytorch_model.bin: pickle checkpoints are not read (they can run code); convert to safetensors"))
    }

    @Test func capacityIsCheckedBeforeLoading() throws {
        let checkpoint = try Checkpoint(directory: Fixtures.path("forward", "moe-8x2"))
        let group = try DeviceGroup([Device(id: 0, capacity: 1 << 30), Device(id: 1, capacity: 100_000)])
        let message = Self.message { _ = try CausalLM.load(checkpoint, on: group) }
        #expect(message.hasPrefix("device 1: its stage needs"))
        #expect(message.contains("but its budget is 97.66 KiB"))
        #expect(group.devices[0].allocatedBytes == 0)
    }

    @Test func tokensOutsideVocabularyAreRejected() throws {
        let lm = try CausalLM.load(try Checkpoint(directory: Fixtures.path("forward", "dense-tied-gqa")),
                                   on: try DeviceGroup.make(count: 1))
        #expect(Self.message { _ = try lm.logits(TokenBatch(rows: [[1, 2], [3, 128]])) }
            == "token id 128 at row 1, position 1 is outside the vocabulary (vocab_size 128)")
        #expect(Self.message { _ = try lm.logits(TokenBatch(rows: [[1, 1 << 40]])) }
            == "token id 2147483647 at row 0, position 1 is outside the vocabulary (vocab_size 128)")
    }
}

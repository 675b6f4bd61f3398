import Foundation
import Testing
import KDCore
import KDModels

/// Hostile or broken inputs to the model-side parsers (safetensors headers, config.json, adapter
/// configs, output paths) end in one KDError naming the file and the problem: never a trap, a
/// wrapped size, a hang, or data that does not match its header.
@Suite struct InputHardeningTests {
    static func message(_ body: () throws -> Void) -> String {
        CheckpointErrorTests.message(body)
    }

    /// A safetensors file from a header (JSON text), a declared header length and the data bytes.
    static func safetensors(_ header: String, length: UInt64? = nil, data: [UInt8]) throws -> String {
        let path = Fixtures.temporaryDirectory() + "/t.safetensors"
        var bytes = Data()
        var declared = (length ?? UInt64(header.utf8.count)).littleEndian
        bytes.append(Data(bytes: &declared, count: 8))
        bytes.append(Data(header.utf8))
        bytes.append(contentsOf: data)
        try bytes.write(to: URL(fileURLWithPath: path))
        return path
    }

    static func open(_ path: String) -> String {
        message {
            let file = try SafetensorsFile(path: path)
            for name in file.tensors.keys { _ = try file.load(name, on: Device(id: 0)) }
        }
    }

    @Test func headerLengthBeyondTheFileOrIntIsRefused() throws {
        let good = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        for length: UInt64 in [.max, 1 << 63, (1 << 63) - 1, UInt64(good.utf8.count) + 5] {
            let path = try Self.safetensors(good, length: length, data: [0, 0, 128, 63])
            #expect(Self.open(path).hasPrefix("\(path): header length \(length) runs past the end of the file"))
        }
    }

    @Test func headerOneByteShortLeavesDataUndescribed() throws {
        // The header is padded with a space, so one byte short still parses, but every tensor would
        // then start one byte early: the data section no longer matches the offsets.
        let header = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} "#
        let path = try Self.safetensors(header, length: UInt64(header.utf8.count - 1), data: [0, 0, 128, 63])
        #expect(Self.open(path) == "\(path): 1 bytes after the last tensor's data: the header does not describe the data (wrong header length or offsets)")
    }

    @Test func offsetsMustTileTheDataExactly() throws {
        let data = [UInt8](repeating: 0, count: 8)
        let overlap = try Self.safetensors(
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#, data: data)
        #expect(Self.open(overlap).hasPrefix("\(overlap): tensor 'b': data_offsets overlaps the tensor before it"))
        let gap = try Self.safetensors(
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: data)
        #expect(Self.open(gap).hasPrefix("\(gap): tensor 'a': data_offsets leaves a gap before it"))
        let shifted = try Self.safetensors(
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            data: data + [0])
        #expect(Self.open(shifted).hasPrefix("\(shifted): 1 bytes after the last tensor's data"))
        let whole = try Self.safetensors(
            #"{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: data)
        #expect(Self.open(whole) == "no error")
    }

    @Test func sizesThatOverflowAreRefused() throws {
        let huge = try Self.safetensors(
            #"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#, data: [])
        #expect(Self.open(huge) == "\(huge): tensor 'a': shape [4294967296, 4294967296] is not a valid size")
        let nearMax = try Self.safetensors(
            #"{"a":{"dtype":"U8","shape":[9223372036854775800],"data_offsets":[7,9223372036854775807]}}"#, data: [1])
        #expect(Self.open(nearMax).hasSuffix("data runs past the end of the file (98 bytes): the file is truncated"))
        let negative = try Self.safetensors(#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
        #expect(Self.open(negative) == "\(negative): tensor 'a': shape [-1] is not a valid size")
    }

    @Test func aFIFOIsRefusedInsteadOfBlocking() throws {
        let path = Fixtures.temporaryDirectory() + "/model.safetensors"
        #expect(mkfifo(path, 0o600) == 0)
        #expect(Self.open(path) == "\(path): is not a regular file")
        let directory = Fixtures.temporaryDirectory()
        #expect(Self.open(directory) == "\(directory): is a directory")
    }

    @Test func longOrControlCharacterNamesAreCutAndEscaped() throws {
        let name = "x\u{0}\n" + String(repeating: "y", count: 5000)
        let header = "{\"\(name.replacingOccurrences(of: "\u{0}", with: "\\u0000").replacingOccurrences(of: "\n", with: "\\n"))\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}"
        let path = try Self.safetensors(header, data: [0])
        let text = Self.open(path)
        #expect(!text.contains("\n") && !text.contains("\u{0}"))
        #expect(text.count < 400)
        #expect(text.contains(#"'x\u{0}\u{A}yyy"#))
        #expect(text.contains("(5003 characters)"))
    }

    // MARK: config.json

    static func config(_ edits: [String: Any], moe: Bool = false) throws -> String {
        var object: [String: Any] = [
            "model_type": moe ? "qwen3_moe" : "qwen3", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 10000.0,
        ]
        if moe { object.merge(["num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32]) { $1 } }
        object.merge(edits) { $1 }
        let path = Fixtures.temporaryDirectory() + "/config.json"
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func spec(_ edits: [String: Any], moe: Bool = false) throws -> String {
        let path = try config(edits, moe: moe)
        return message { _ = try ModelConfigurations.load(configFile: path) }.replacingOccurrences(of: path + ": ", with: "")
    }

    @Test func configValuesAreBoundedBeforeAnythingIsSized() throws {
        #expect(try Self.spec([:]) == "no error")
        #expect(try Self.spec([:], moe: true) == "no error")
        for layers in [1 << 31, 1 << 40, Int.max, 0, -3] {
            #expect(try Self.spec(["num_hidden_layers": layers]) == "num_hidden_layers (\(layers)) must be between 1 and 1024")
            #expect(try Self.spec(["num_hidden_layers": layers], moe: true) == "num_hidden_layers (\(layers)) must be between 1 and 1024")
        }
        #expect(try Self.spec(["intermediate_size": -1]) == "intermediate_size (-1) must be between 1 and 1048576")
        #expect(try Self.spec(["num_experts": 1 << 40], moe: true) == "num_experts (1099511627776) must be between 1 and 4096")
        #expect(try Self.spec(["num_experts_per_tok": 5], moe: true) == "num_experts_per_tok (5) must be between 1 and num_experts (4)")
        #expect(try Self.spec(["hidden_size": 1 << 62]) == "hidden_size (4611686018427387904) must be between 1 and 131072")
        #expect(try Self.spec(["vocab_size": 1 << 62]) == "vocab_size (4611686018427387904) must be between 1 and 16777216")
        #expect(try Self.spec(["num_attention_heads": 5]) == "num_attention_heads (5) must be a positive multiple of num_key_value_heads (2)")
        #expect(try Self.spec(["head_dim": 15]) == "head_dim (15) must be positive and even for rotary embeddings")
        #expect(try Self.spec(["rope_theta": -1.0]) == "rope_theta (-1.0) must be positive and finite")
        #expect(try Self.spec(["hidden_size": 131072, "intermediate_size": 1 << 20, "num_hidden_layers": 1024]).hasPrefix(
            "the model would have about 4.2"))
    }

    // MARK: PEFT adapter_config.json

    static func adapterSettings(_ edits: [String: Any]) throws -> String {
        var object: [String: Any] = ["peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]]
        object.merge(edits) { $1 }
        let directory = Fixtures.temporaryDirectory()
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: directory + "/adapter_config.json"))
        return message { _ = try PEFTAdapter.settings(directory: directory) }
            .replacingOccurrences(of: directory + "/adapter_config.json: ", with: "")
    }

    @Test func adapterConfigValuesAreTyped() throws {
        #expect(try Self.adapterSettings([:]) == "no error")
        #expect(try Self.adapterSettings(["lora_alpha": "x"]) == "lora_alpha must be a number")
        #expect(try Self.adapterSettings(["lora_alpha": true]) == "lora_alpha must be a number")
        #expect(try Self.adapterSettings(["use_rslora": "yes"]) == "use_rslora must be true or false")
        #expect(try Self.adapterSettings(["use_rslora": 1]) == "use_rslora must be true or false")
        #expect(try Self.adapterSettings(["r": 2.5]) == "r must be an integer")
        #expect(try Self.adapterSettings(["r": Int.max]) == "r must be an integer between 1 and 65536")
        #expect(try Self.adapterSettings(["lora_dropout": 1.5]) == "lora_dropout must be in [0, 1)")
        #expect(try Self.adapterSettings(["target_modules": "q_proj"]) == "target_modules must be a list of module names")
        #expect(try Self.adapterSettings(["peft_type": String(repeating: "z", count: 500)]).hasPrefix("peft_type 'zzz"))
    }

    // MARK: Outputs

    @Test func aFileOutputNeverReplacesADirectoryOrDevice() throws {
        let directory = Fixtures.temporaryDirectory()
        try Data("keep".utf8).write(to: URL(fileURLWithPath: directory + "/precious.txt"))
        #expect(Self.message { _ = try SafetensorsWriter(path: directory, entries: []) }
            == "\(directory): is a directory; kd only writes a file where there is none or a regular file")
        #expect(FileManager.default.fileExists(atPath: directory + "/precious.txt"))
        #expect(Self.message { _ = try SafetensorsWriter(path: "/dev/null", entries: []) }.hasPrefix("/dev/null: is not a regular file"))
    }

    @Test func forceReplacesOnlyADirectoryKdWrote() throws {
        #expect(Self.message { try requireReplaceableDirectory("/") }.hasPrefix("/: "))
        #expect(Self.message { try requireReplaceableDirectory(NSHomeDirectory()) }.contains("refusing to replace"))
        let user = Fixtures.temporaryDirectory()
        try Data("mine".utf8).write(to: URL(fileURLWithPath: user + "/notes.txt"))
        #expect(Self.message { try requireReplaceableDirectory(user) }.hasSuffix("so kd did not write it; --force replaces only a directory kd wrote"))
        let model = Fixtures.temporaryDirectory()
        try Data("{}".utf8).write(to: URL(fileURLWithPath: model + "/config.json"))
        #expect(Self.message { try requireReplaceableDirectory(model) } == "no error")
        #expect(Self.message { try requireReplaceableDirectory(user + "/absent") } == "no error")
    }
}

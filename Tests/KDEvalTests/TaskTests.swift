import Foundation
import Testing
@testable import KDEval

@Suite struct TaskTests {
    @Test func gsm8kAnswersAreTheLastNumber() {
        #expect(GSM8K.reference("She has 3 + 4 = 7 apples.\n#### 7") == "7")
        #expect(GSM8K.reference("#### 1,250") == "1250")
        #expect(GSM8K.reference("no marker") == nil)
        #expect(GSM8K.lastNumber("First 12, then 3.50 dollars.") == "3.5")
        #expect(GSM8K.lastNumber("The answer is -4.") == "-4")
        #expect(GSM8K.lastNumber("It costs $1,000.00 in total") == "1000")
        #expect(GSM8K.lastNumber("no digits") == nil)
        #expect(GSM8K.isCorrect(generated: "So the total is 18 eggs.", reference: "... #### 18"))
        #expect(!GSM8K.isCorrect(generated: "18 eggs, or maybe 19", reference: "#### 18"))
        #expect(EvalRecords.contains("the answer is 42.", answer: "42"))
        #expect(!EvalRecords.contains("the answer is 142", answer: "42"))
    }

    @Test func humanEvalCodeIsTakenFromFencesAndAssembled() {
        #expect(HumanEval.code(from: "Here:\n```python\nreturn 1\n```\nDone") == "return 1\n")
        #expect(HumanEval.code(from: "    return 1\n") == "    return 1\n")
        let program = HumanEval.program(prompt: "def f(x):\n    \"\"\"doc\"\"\"\n", completion: "    return x\n",
                                        test: "def check(c):\n    assert c(2) == 2\n", entryPoint: "f")
        #expect(program.hasSuffix("check(f)\n"))
        let whole = HumanEval.program(prompt: "def f(x):\n    \"\"\"doc\"\"\"\n", completion: "```\ndef f(x):\n    return x\n```",
                                      test: "", entryPoint: "f")
        #expect(whole.contains("\n\ndef f(x):\n    return x\n") || whole.contains("\ndef f(x):\n    return x"))
    }

    /// The canonical solutions of the first HumanEval problems pass in the sandbox; a wrong one fails.
    @Test func canonicalSolutionsPassInTheSandbox() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Configs/data/humaneval.jsonl.gz").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/gunzip")
        process.arguments = ["-c", path]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let records = data.split(separator: UInt8(ascii: "\n")).prefix(4).map {
            try! JSONSerialization.jsonObject(with: Data($0)) as! [String: String]
        }
        let sandbox = try Sandbox.make()
        for record in records {
            let program = HumanEval.program(prompt: record["prompt"]!, completion: record["canonical_solution"]!,
                                            test: record["test"]!, entryPoint: record["entry_point"]!)
            #expect(sandbox.run(program) == .passed, "\(record["task_id"]!)")
        }
        let wrong = HumanEval.program(prompt: records[0]["prompt"]!, completion: "    return True\n", test: records[0]["test"]!,
                                      entryPoint: records[0]["entry_point"]!)
        #expect(sandbox.run(wrong) != .passed)
    }
}

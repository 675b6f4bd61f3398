import Foundation
import KDCore
import KDText

/// GSM8K-style scoring: the reference is the number after `####`; a generated answer is right
/// when its last number equals it.
public enum GSM8K {
    /// The number after the last `####` of a reference answer, normalised.
    public static func reference(_ answer: String) -> String? {
        guard let range = answer.range(of: "####", options: .backwards) else { return nil }
        return lastNumber(String(answer[range.upperBound...]))
    }

    /// The last number in `text` (commas and a trailing period dropped; "3.50" reads as "3.5").
    public static func lastNumber(_ text: String) -> String? {
        var numbers: [String] = []
        var current = ""
        let characters = Array(text)
        for (i, c) in characters.enumerated() {
            let startsNegative = c == "-" && current.isEmpty && i + 1 < characters.count && characters[i + 1].isNumber
            if c.isASCII && (c.isNumber || ((c == "," || c == ".") && !current.isEmpty)) || startsNegative {
                current.append(c)
            } else if !current.isEmpty {
                numbers.append(current)
                current = ""
            }
        }
        if !current.isEmpty { numbers.append(current) }
        guard let last = numbers.last else { return nil }
        return normalise(last)
    }

    static func normalise(_ number: String) -> String? {
        var text = number.replacingOccurrences(of: ",", with: "")
        while text.hasSuffix(".") { text.removeLast() }
        guard let value = Double(text) else { return nil }
        if value == value.rounded() && abs(value) < 1e15 { return String(Int(value)) }
        return String(value)
    }

    public static func isCorrect(generated: String, reference: String) -> Bool {
        guard let answer = self.reference(reference), let predicted = lastNumber(generated) else { return false }
        return answer == predicted
    }
}

/// HumanEval scoring: the completion is run with the problem's tests in the sandbox.
public enum HumanEval {
    /// The code of a response: the first fenced block if there is one, else the whole text.
    public static func code(from response: String) -> String {
        guard let open = response.range(of: "```") else { return response }
        let afterFence = response[open.upperBound...]
        let body = afterFence.drop { $0 != "\n" }.dropFirst()  // skip the language tag line
        guard let close = body.range(of: "```") else { return String(body) }
        return String(body[..<close.lowerBound])
    }

    /// The program that checks a completion: the prompt (its imports and signature), the code —
    /// appended as the body, or after it when it defines the entry point itself — then the tests.
    public static func program(prompt: String, completion: String, test: String, entryPoint: String) -> String {
        let code = self.code(from: completion)
        let body = code.contains("def \(entryPoint)(") ? "\n" + code : code
        return prompt + body + "\n\n" + test + "\n\ncheck(\(entryPoint))\n"
    }
}

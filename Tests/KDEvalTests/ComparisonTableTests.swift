import Foundation
import Testing
@testable import KDEval

@Suite struct ComparisonTableTests {
    /// Wide characters, emoji, combining marks, tabs, newlines and escape codes in responses still
    /// give rows of one width on a terminal, with nothing that moves the cursor.
    @Test func rowsKeepTheirColumns() {
        let responses = [
            "return x + 1", "研究所摆放.Web 研究所摆放研究所摆放研究所摆放研究所摆放", "😀👍🏽 family 👨‍👩‍👧 flags 🇯🇵🇫🇷 and more text",
            "e\u{301}te\u{301} cafe\u{301} with combining marks and a long tail of words", "tab\there\r\nnew line\u{1B}[2J",
            "한국어 텍스트와 ｆｕｌｌｗｉｄｔｈ", "",
        ]
        let samples = responses.enumerated().map { index, text in
            Comparison.Sample(index: index, prompt: "p", original: text, distilled: String(text.reversed()),
                              originalTokens: 1, distilledTokens: 1, reference: nil)
        }
        let table = Comparison.table(Comparison.Section(temperature: 0.7, samples: samples, tokensPerSecond: 1))
        let rows = table.split(separator: "\n").map(String.init).filter { $0.dropFirst(2).first?.isNumber == true }
        #expect(rows.count == responses.count)
        let widths = rows.map { $0.reduce(0) { $0 + Comparison.columns($1) } }
        #expect(Set(widths).count == 1, "\(widths)\n\(table)")
        #expect(!table.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "control characters in\n\(table)")
    }
}

/// `text` as it may appear in a one-line error: in single quotes, control characters, quotes and
/// backslashes escaped, and cut to `limit` characters (with the full length said) so that input
/// echoed back can neither break the line nor flood the terminal.
public func quoted(_ text: String, limit: Int = 120) -> String {
    "'" + escaped(text, limit: limit, quote: true)
}

/// `text` with control characters escaped and cut to `limit` characters, for the part of an error
/// that comes from elsewhere (a parser's own message that echoes its input).
public func escaped(_ text: String, limit: Int = 240) -> String {
    escaped(text, limit: limit, quote: false)
}

private func escaped(_ text: String, limit: Int, quote: Bool) -> String {
    var out = ""
    var shown = 0
    var total = 0
    for scalar in text.unicodeScalars {
        total += 1
        guard shown < limit else { continue }
        shown += 1
        switch scalar {
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        case "'" where quote: out += "\\'"
        case "\\" where quote: out += "\\\\"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value)
                || scalar.value == 0x2028 || scalar.value == 0x2029 {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    if quote { out += "'" }
    if total > shown { out += "… (\(total) characters)" }
    return out
}

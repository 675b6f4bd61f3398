/// Text from an input file, made safe to echo in a one-line error message: in single quotes,
/// cut after `limit` Unicode scalars (then `'abc…' (80000 characters)`), and with every control
/// character (C0 including NUL and newlines, DEL, C1, U+2028/U+2029) and the quote and
/// backslash escaped as `\u{…}`, `\'` and `\\`, so the message stays one printable line
/// whatever the input holds.
///
/// The limit counts scalars, not Characters: a run of combining marks is one Character of any
/// length.
public func quoted(_ text: String, limit: Int = 120) -> String {
    let (body, total) = escape(text, limit: limit, quote: true)
    return total > limit ? "'" + body + "…' (\(total) characters)" : "'" + body + "'"
}

/// Text from elsewhere (a parser's own message, which may echo its input) made safe the same way,
/// without quotes: control characters escaped, cut after `limit` scalars (`abc… (N characters)`).
public func escaped(_ text: String, limit: Int = 240) -> String {
    let (body, total) = escape(text, limit: limit, quote: false)
    return total > limit ? body + "… (\(total) characters)" : body
}

private func escape(_ text: String, limit: Int, quote: Bool) -> (String, total: Int) {
    var out = ""
    var count = 0
    var total = 0
    for scalar in text.unicodeScalars {
        total += 1
        guard count < limit else { continue }
        count += 1
        switch scalar.value {
        case 0x27 where quote: out += "\\'"
        case 0x5C where quote: out += "\\\\"
        case 0x00..<0x20, 0x7F..<0xA0, 0x2028, 0x2029:
            out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return (out, total)
}

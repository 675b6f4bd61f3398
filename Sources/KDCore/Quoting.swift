/// Text from an input file, made safe to echo in a one-line error message: in single quotes,
/// cut after `limit` Unicode scalars (then `'abc…' (80000 characters)`), and with every control
/// character (C0 including NUL and newlines, DEL, C1, U+2028/U+2029) and the quote and
/// backslash escaped as `\u{…}`, `\'` and `\\`, so the message stays one printable line
/// whatever the input holds.
///
/// The limit counts scalars, not Characters: a run of combining marks is one Character of any
/// length.
public func quoted(_ text: String, limit: Int = 120) -> String {
    var out = "'"
    var count = 0
    var total = 0
    for scalar in text.unicodeScalars {
        total += 1
        guard count < limit else { continue }
        count += 1
        switch scalar.value {
        case 0x27: out += "\\'"
        case 0x5C: out += "\\\\"
        case 0x00..<0x20, 0x7F..<0xA0, 0x2028, 0x2029:
            out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return total > count ? out + "…' (\(total) characters)" : out + "'"
}

/// The Qwen2 pre-tokenizer, written by hand over Unicode scalars. It splits text exactly as the
/// regex of tokenizer.json does (Oniguruma semantics: first matching alternative at each position):
///
///     (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} | ?[^\s\p{L}\p{N}]+[\r\n]*
///     | \s*[\r\n]+ | \s+(?!\S) | \s+
enum PreTokenizer {
    static let pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// Character classes of the regex, one bit each.
    struct Class: OptionSet {
        let rawValue: UInt8
        static let letter = Class(rawValue: 1)  // \p{L}
        static let number = Class(rawValue: 2)  // \p{N}
        static let space = Class(rawValue: 4)  // \s (White_Space)
        static let newline = Class(rawValue: 8)  // \r or \n
    }

    /// Classes of the Basic Multilingual Plane, computed once.
    static let bmpClasses: [Class] = (0..<0x10000).map { value in
        Unicode.Scalar(UInt32(value)).map(classify) ?? []
    }

    static func classify(_ scalar: Unicode.Scalar) -> Class {
        var result: Class = []
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: result.insert(.letter)
        case .decimalNumber, .letterNumber, .otherNumber: result.insert(.number)
        default: break
        }
        if scalar.properties.isWhitespace { result.insert(.space) }
        if scalar == "\r" || scalar == "\n" { result.insert(.newline) }
        return result
    }

    @inline(__always)
    static func classOf(_ scalar: Unicode.Scalar) -> Class {
        scalar.value < 0x10000 ? bmpClasses[Int(scalar.value)] : classify(scalar)
    }

    /// Calls `emit` with each piece's scalar range, in order; the pieces tile `scalars`.
    static func split(_ scalars: UnsafeBufferPointer<Unicode.Scalar>, classes: UnsafeBufferPointer<Class>,
                      emit: (Range<Int>) -> Void) {
        let n = scalars.count
        func isSymbol(_ i: Int) -> Bool { classes[i].isDisjoint(with: [.letter, .number, .space]) }
        func lower(_ i: Int) -> UInt32 {
            let v = scalars[i].value
            return (v >= 65 && v <= 90) ? v + 32 : (v == 0x17F ? 115 : v)  // ASCII fold; ſ folds to s
        }
        var i = 0
        while i < n {
            let start = i
            // 'a contraction: 's 't 'm 'd, 're 've 'll (case-insensitive)
            if scalars[i] == "'" && i + 1 < n {
                let a = lower(i + 1)
                if a == 115 || a == 116 || a == 109 || a == 100 {
                    emit(start..<(i + 2)); i += 2; continue
                }
                if i + 2 < n {
                    let b = lower(i + 2)
                    if (a == 114 && b == 101) || (a == 118 && b == 101) || (a == 108 && b == 108) {
                        emit(start..<(i + 3)); i += 3; continue
                    }
                }
            }
            let c = classes[i]
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if c.contains(.letter) || (c.isDisjoint(with: [.letter, .number, .newline]) && i + 1 < n && classes[i + 1].contains(.letter)) {
                i += 1
                while i < n && classes[i].contains(.letter) { i += 1 }
                emit(start..<i); continue
            }
            // \p{N}
            if c.contains(.number) {
                i += 1
                emit(start..<i); continue
            }
            //  ?[^\s\p{L}\p{N}]+[\r\n]*
            var j = i
            if scalars[j] == " " && j + 1 < n && isSymbol(j + 1) { j += 1 }
            if isSymbol(j) {
                while j < n && isSymbol(j) { j += 1 }
                while j < n && classes[j].contains(.newline) { j += 1 }
                i = j
                emit(start..<i); continue
            }
            // Whitespace: \s*[\r\n]+, then \s+(?!\S), then \s+.
            var end = i
            var lastNewline = -1
            while end < n && classes[end].contains(.space) {
                if classes[end].contains(.newline) { lastNewline = end }
                end += 1
            }
            if lastNewline >= 0 {
                i = lastNewline + 1
            } else if end == n || end - i == 1 {
                i = end
            } else {
                i = end - 1
            }
            emit(start..<i)
        }
    }
}

//! Is this one well-formed JSON value (RFC 8259), in UTF-8? The predict path
//! asks it of every input and, in envelope mode, of every model output; it
//! builds nothing and must not be used where the value itself is needed.
//! Also: may this text stand between quotes in JSON as it is (the access
//! log writes its fields so)?
//!
//! Why by hand: the check was serde_json's `IgnoredAny` after std's UTF-8
//! check, 6.5 k instructions for the benchmark's request and answer
//! (callgrind), the largest item of warder's own cost per predict. sonic-rs
//! took 10 % fewer; simd-json and jiter took longer on bodies this small.
//! This walks the grammar with no visitor and scans strings eight bytes at a
//! time: 4.4 k instructions, and about a quarter less time. It
//! accepts exactly what the previous check accepted — the test below
//! compares the two over generated and mutated documents — including lone
//! `\u` surrogates, which RFC 8259's grammar allows, and nesting of any
//! depth (serde_json's skip has no limit either; nesting costs no stack here).

/// One well-formed JSON value, with optional whitespace around it, in UTF-8.
pub(crate) fn is_json_value(bytes: &[u8]) -> bool {
    // UTF-8 is checked string by string, and only for strings that hold a
    // byte at or above 0x80: outside strings the grammar refuses such bytes,
    // and no ASCII byte (a quote) occurs inside a multi-byte sequence, so
    // the document is UTF-8 exactly when each of those strings is. Model
    // inputs and outputs are mostly ASCII: most need no UTF-8 pass at all.
    walk(bytes).is_some()
}

/// The containers open around the current value, innermost first: one bit
/// each (set for an object), the first 128 in a word, any deeper in a vector
/// that stays unallocated for all but absurd documents.
#[derive(Default)]
struct Open {
    depth: usize,
    bits: u128,
    deeper: Vec<bool>,
}

impl Open {
    fn push(&mut self, object: bool) {
        if self.depth >= 128 {
            self.deeper.push(self.bits >> 127 == 1);
        }
        self.depth += 1;
        self.bits = self.bits << 1 | u128::from(object);
    }

    fn pop(&mut self) {
        self.depth -= 1;
        self.bits >>= 1;
        if self.depth >= 128 {
            let outer = self.deeper.pop().unwrap_or_default();
            self.bits |= u128::from(outer) << 127;
        }
    }

    fn in_object(&self) -> bool {
        self.bits & 1 == 1
    }
}

/// The grammar, iteratively, so nesting costs no stack.
fn walk(b: &[u8]) -> Option<()> {
    let mut i = 0;
    let mut open = Open::default();
    'value: loop {
        i = skip_ws(b, i);
        match *b.get(i)? {
            c @ (b'{' | b'[') => {
                let object = c == b'{';
                i = skip_ws(b, i + 1);
                let close = if object { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    open.push(object);
                    if object {
                        i = key(b, i)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = string(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            _ => return None,
        }
        // After a value: a comma, the end of its container, or the end.
        loop {
            i = skip_ws(b, i);
            if open.depth == 0 {
                return (i == b.len()).then_some(());
            }
            let object = open.in_object();
            match *b.get(i)? {
                b',' => {
                    i += 1;
                    if object {
                        i = key(b, skip_ws(b, i))?;
                    }
                    continue 'value;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            i += 1;
            open.pop();
        }
    }
}

#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// An object's key and its colon, from the key's opening quote.
#[inline(always)]
fn key(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string(b, i)?);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..i + word.len())
        .filter(|w| *w == word)
        .map(|_| i + word.len())
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b[i] == b'-' {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = some_digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = some_digits(b, i)?;
    }
    Some(i)
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// At least one digit.
fn some_digits(b: &[u8], i: usize) -> Option<usize> {
    let end = digits(b, i);
    (end > i).then_some(end)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` below `n` (n ≤ 0x80) flagged by their high bit. Only
/// the lowest flag is exact (a borrow may flag a byte above it, never one
/// below), which is all the callers use.
#[inline(always)]
fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
}

/// The quotes, backslashes and control characters among the eight bytes of
/// `word` (read little-endian), flagged as [`below`] does.
#[inline(always)]
fn specials(word: u64) -> u64 {
    below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
        | below(word, 0x20)
}

fn word_at(chunk: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// Whether `text` may stand between quotes in JSON as it is: it holds no
/// quote, backslash or control character.
pub(crate) fn is_plain_string(text: &str) -> bool {
    let mut words = text.as_bytes().chunks_exact(8);
    if words.by_ref().any(|chunk| specials(word_at(chunk)) != 0) {
        return false;
    }
    words
        .remainder()
        .iter()
        .all(|&c| c >= 0x20 && c != b'"' && c != b'\\')
}

/// A string from its opening quote; returns the index after the closing one.
/// Its text must be UTF-8 (see [`is_json_value`]).
#[inline(always)]
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    let start = i;
    // The bytes seen, OR-ed: a high bit set means a byte at or above 0x80.
    let mut seen = 0u64;
    loop {
        // Eight bytes at a time up to the first quote, backslash or control
        // character (bytes at or above 0x80 are none of these).
        while let Some(chunk) = b.get(i..i + 8) {
            let word = word_at(chunk);
            seen |= word;
            let special = specials(word);
            if special != 0 {
                i += (special.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        let c = *b.get(i)?;
        seen |= u64::from(c);
        match c {
            b'"' => {
                let ascii = seen & HIGHS == 0;
                return (ascii || std::str::from_utf8(&b[start..i]).is_ok()).then_some(i + 1);
            }
            b'\\' => {
                i += 1;
                match *b.get(i)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 1,
                    b'u' => {
                        let hex = b.get(i + 1..i + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 5;
                    }
                    _ => return None,
                }
            }
            0x00..=0x1f => return None,
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The check this module replaces, and must agree with.
    fn reference(bytes: &[u8]) -> bool {
        std::str::from_utf8(bytes).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    }

    #[test]
    fn accepts_json_values() {
        let good: &[&[u8]] = &[
            b"0",
            b"-0",
            b"-0.5e+3",
            b"1E9",
            b"12.25e-2",
            b"true",
            b"false",
            b"null",
            b" \t\r\n{ } ",
            b"[]",
            b"[[],{}]",
            b"\"\"",
            b"\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\uD800\"",
            "\"é — 漢字 🦀 long enough for several words\"".as_bytes(),
            br#"{"a":[1,{"b":null}],"c" : "d" , "e":{"f":[true,false]}}"#,
        ];
        for doc in good {
            assert!(is_json_value(doc), "{:?}", String::from_utf8_lossy(doc));
            assert!(reference(doc), "{:?}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn refuses_what_is_not_one_json_value() {
        let bad: &[&[u8]] = &[
            b"",
            b" ",
            b"{} {}",
            b"[1,]",
            b"[,1]",
            b"[1 2]",
            b"{\"a\":}",
            b"{\"a\" 1}",
            b"{\"a\":1,}",
            b"{1:2}",
            b"{\"a\"}",
            b"[1}",
            b"{\"a\":1]",
            b"[",
            b"]",
            b"01",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"-",
            b"+1",
            b"tru",
            b"nul",
            b"True",
            b"nan",
            b"\"unterminated",
            b"\"a\x01b\"",
            b"\"tab\tinside\"",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\\u12G4\"",
            b"{\"a\":\"\xff\"}",
            b"\"\xc3\"",
            b"\"\xed\xa0\x80\"",
            b"[\"eight bytes or more, then \xe9 alone in a long string\"]",
            b"{\"k\":\"ok\",\"\xc3\xa9 then a cut \xe2\x82 sequence\":1}",
        ];
        for doc in bad {
            assert!(!is_json_value(doc), "{:?}", String::from_utf8_lossy(doc));
            assert!(!reference(doc), "{:?}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn nests_to_any_depth_and_closes_what_it_opened() {
        for depth in [1, 127, 128, 129, 130, 300, 100_000] {
            // Alternating kinds, so a container bit lost across the word's
            // edge shows as a mismatched close.
            let (mut doc, mut closes) = (String::new(), Vec::new());
            for level in 0..depth {
                if level % 3 == 0 {
                    doc.push_str("{\"k\":");
                    closes.push('}');
                } else {
                    doc.push('[');
                    closes.push(']');
                }
            }
            doc.push('0');
            let good: String = doc.chars().chain(closes.iter().rev().copied()).collect();
            assert!(is_json_value(good.as_bytes()), "depth {depth}");
            assert!(reference(good.as_bytes()), "depth {depth}");
            // The outermost close swapped for the other kind.
            let mut bad = good.clone();
            let last = if bad.pop() == Some('}') { ']' } else { '}' };
            bad.push(last);
            assert!(!is_json_value(bad.as_bytes()), "depth {depth}");
            assert!(!reference(bad.as_bytes()), "depth {depth}");
        }
    }

    #[test]
    fn a_special_byte_is_found_at_every_offset_of_a_word() {
        // Every position of the eight-byte scan, for each byte that ends it.
        for len in 0..24 {
            let text = "x".repeat(len);
            for (tail, ok) in [
                ("\"", true),
                ("\\n\"", true),
                ("\u{1}\"", false),
                ("é\"", true),
            ] {
                let doc = format!("\"{text}{tail}");
                assert_eq!(is_json_value(doc.as_bytes()), ok, "{doc:?}");
            }
            let open = format!("\"{text}");
            assert!(!is_json_value(open.as_bytes()), "{open:?}");
        }
    }

    #[test]
    fn plain_strings_hold_no_quote_backslash_or_control_character() {
        for len in 0..20 {
            let text = "a".repeat(len);
            assert!(is_plain_string(&text));
            for at in 0..len {
                for (c, plain) in [
                    ('"', false),
                    ('\\', false),
                    ('\u{1f}', false),
                    ('\n', false),
                    (' ', true),
                    ('é', true),
                    ('~', true),
                ] {
                    let mut t: Vec<char> = text.chars().collect();
                    t[at] = c;
                    let t: String = t.into_iter().collect();
                    assert_eq!(is_plain_string(&t), plain, "{t:?}");
                }
            }
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
            "[ -~\\\\\"\u{0}-\u{1f}é🦀]{0,24}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A byte edit of a document: what it breaks, both checks must see.
    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, u8),
        Remove(usize),
        Replace(usize, u8),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let byte = prop_oneof![
            prop::sample::select(b"{}[]:,\"\\ -+.eE0123456789tfnul\x01\x7f\xc3\xa9\xff".to_vec()),
            any::<u8>(),
        ];
        prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(at, c)| Edit::Insert(at, c)),
            any::<usize>().prop_map(Edit::Remove),
            (any::<usize>(), byte).prop_map(|(at, c)| Edit::Replace(at, c)),
        ]
    }

    fn apply(doc: &mut Vec<u8>, edit: &Edit) {
        let len = doc.len();
        match *edit {
            Edit::Insert(at, c) => doc.insert(at % (len + 1), c),
            Edit::Remove(at) if len > 0 => {
                doc.remove(at % len);
            }
            Edit::Replace(at, c) if len > 0 => doc[at % len] = c,
            _ => {}
        }
    }

    /// Documents spliced from JSON's pieces, right and wrong: where the
    /// grammar's edges are (leading zeros, empty exponents, stray commas).
    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        const PIECES: &[&str] = &[
            "{", "}", "[", "]", ":", ",", " ", "\"k\"", "\"", "\\", "\\u00e9", "\\uzz", "0", "7",
            "01", "-", "+", ".", ".5", "e", "E+", "e-3", "true", "fals", "null", "é", "\u{1}",
            "\t",
        ];
        prop::collection::vec(prop::sample::select(PIECES), 0..12)
            .prop_map(|parts| parts.concat().into_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn agrees_with_serde_json(
            value in json(),
            pretty in any::<bool>(),
            edits in prop::collection::vec(edit(), 0..4),
        ) {
            let mut doc = if pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            }
            .expect("a Value serializes");
            prop_assert!(is_json_value(&doc));
            for e in &edits {
                apply(&mut doc, e);
            }
            prop_assert_eq!(is_json_value(&doc), reference(&doc), "{:?}", String::from_utf8_lossy(&doc));
        }

        #[test]
        fn a_plain_string_is_one_serde_json_writes_unescaped(text in any::<String>()) {
            let quoted = serde_json::to_string(&text).expect("a string serializes");
            prop_assert_eq!(is_plain_string(&text), quoted == format!("\"{text}\""));
        }

        #[test]
        fn agrees_with_serde_json_on_spliced_pieces(doc in pieces()) {
            prop_assert_eq!(is_json_value(&doc), reference(&doc), "{:?}", String::from_utf8_lossy(&doc));
        }
    }
}

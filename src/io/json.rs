//! The little JSON a safetensors header needs: a parser that refuses what it cannot hold
//! (deep nesting, huge numbers, invalid escapes) and a string escaper for the writer.

use std::collections::BTreeMap;

/// Nesting deeper than this is refused: a real header nests three levels, and a
/// recursive parser must not let a hostile file overflow the stack.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// The number's source text: each caller converts it to the type it needs.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    /// Keys in file order; a duplicate key is a parse error.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// A non-negative integer that fits a u64 (no sign, fraction or exponent).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
            _ => None,
        }
    }
}

type R<T> = std::result::Result<T, String>;

/// Parses one JSON value filling the whole of `s` (surrounding whitespace allowed).
pub(crate) fn parse(s: &str) -> R<Json> {
    let mut p = Parser { s: s.as_bytes(), i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing characters at offset {}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at offset {}", c as char, self.i))
        }
    }
    fn lit(&mut self, w: &str, v: Json) -> R<Json> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("invalid literal at offset {}", self.i))
        }
    }
    fn value(&mut self, depth: usize) -> R<Json> {
        if depth > MAX_DEPTH {
            return Err(format!("nesting deeper than {MAX_DEPTH}"));
        }
        self.ws();
        match self.peek() {
            None => Err("unexpected end of JSON".into()),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'n') => self.lit("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(c) => Err(format!("unexpected {:?} at offset {}", c as char, self.i)),
        }
    }
    fn object(&mut self, depth: usize) -> R<Json> {
        self.expect(b'{')?;
        let mut fields: Vec<(String, Json)> = Vec::new();
        // A set, not a scan of `fields`: a hostile header with a million keys must not
        // cost a quadratic search.
        let mut seen = std::collections::HashSet::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Json::Obj(fields));
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.ws();
            self.expect(b':')?;
            let v = self.value(depth + 1)?;
            if !seen.insert(k.clone()) {
                return Err(format!("duplicate key {k:?}"));
            }
            fields.push((k, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                _ => return Err(format!("expected ',' or '}}' at offset {}", self.i)),
            }
        }
    }
    fn array(&mut self, depth: usize) -> R<Json> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Json::Arr(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                _ => return Err(format!("expected ',' or ']' at offset {}", self.i)),
            }
        }
    }
    fn number(&mut self) -> R<Json> {
        let start = self.i;
        self.i += (self.peek() == Some(b'-')) as usize;
        let digits = |p: &mut Self| {
            let s = p.i;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i - s
        };
        let int_digits = digits(self);
        if int_digits == 0 || (int_digits > 1 && self.s[self.i - int_digits] == b'0') {
            return Err(format!("invalid number at offset {start}"));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return Err(format!("invalid number at offset {start}"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(format!("invalid number at offset {start}"));
            }
        }
        // The slice is ASCII digits and signs, so this cannot fail.
        Ok(Json::Num(String::from_utf8_lossy(&self.s[start..self.i]).into_owned()))
    }
    fn hex4(&mut self) -> R<u32> {
        let h = self.s.get(self.i..self.i + 4).ok_or("truncated \\u escape")?;
        let h = std::str::from_utf8(h).map_err(|_| "invalid \\u escape")?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("invalid \\u escape at offset {}", self.i));
        }
        self.i += 4;
        u32::from_str_radix(h, 16).map_err(|_| "invalid \\u escape".into())
    }
    fn string(&mut self) -> R<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else { return Err("unterminated string".into()) };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else { return Err("unterminated escape".into()) };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                // A high surrogate must pair with a low one.
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err("unpaired surrogate in \\u escape".into());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("unpaired surrogate in \\u escape".into());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or("invalid code point in \\u escape")?
                        }
                        _ => return Err(format!("invalid escape at offset {}", self.i - 1)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(format!("control character in string at offset {}", self.i - 1)),
                _ => out.push(c),
            }
        }
        // The input is a &str and escapes encode valid chars, so this holds valid UTF-8.
        String::from_utf8(out).map_err(|_| "string is not UTF-8".into())
    }
}

/// `s` as a JSON string literal, quotes included.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `{"k":"v",…}` object of strings.
pub(crate) fn string_map(m: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{}:{}", quote(k), quote(v))).collect();
    format!("{{{}}}", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let v = parse(r#" {"a": [1, 2.5e3, -0], "b\u00e9\ud83d\ude00": {"c": null, "d": true}} "#).unwrap();
        let Json::Obj(f) = v else { panic!() };
        assert_eq!(f[0].1, Json::Arr(vec![Json::Num("1".into()), Json::Num("2.5e3".into()), Json::Num("-0".into())]));
        assert_eq!(f[1].0, "bé😀");
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"a\nb\"",
            "{\"a\":1,\"a\":2}",
            "nul",
            "[] []",
            "{1:2}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&"[".repeat(100_000)).is_err());
        assert_eq!(Json::Num("18446744073709551615".into()).as_u64(), Some(u64::MAX));
        assert_eq!(Json::Num("18446744073709551616".into()).as_u64(), None);
        assert_eq!(Json::Num("1e3".into()).as_u64(), None);
        let q = quote("a\"\\\n\u{1}é");
        assert_eq!(parse(&q).unwrap(), Json::Str("a\"\\\n\u{1}é".into()));
    }
}

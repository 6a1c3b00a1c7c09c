//! A small DEFLATE decoder (RFC 1951) for `np.savez_compressed` archives: stored, fixed
//! and dynamic Huffman blocks, after Mark Adler's `puff.c`. It decodes one bit at a time,
//! which is slow next to zlib but short enough to check by eye; every read, code and
//! back-reference is bounds-checked, and the output may not exceed `max_out`.

type R<T> = std::result::Result<T, String>;

struct Bits<'a> {
    s: &'a [u8],
    pos: usize,
    buf: u64,
    cnt: u32,
}

impl Bits<'_> {
    /// The next `need` (<= 16) bits, least significant first.
    fn bits(&mut self, need: u32) -> R<u32> {
        while self.cnt < need {
            let Some(&b) = self.s.get(self.pos) else { return Err("compressed data is truncated".into()) };
            self.pos += 1;
            self.buf |= (b as u64) << self.cnt;
            self.cnt += 8;
        }
        let v = (self.buf & ((1u64 << need) - 1)) as u32;
        self.buf >>= need;
        self.cnt -= need;
        Ok(v)
    }
}

const MAX_BITS: usize = 15;

/// A canonical Huffman code: how many codes of each length, and the symbols in code order.
struct Huffman {
    count: [u16; MAX_BITS + 1],
    symbol: Vec<u16>,
}

impl Huffman {
    /// Builds the code for `lengths` (one per symbol, 0 = unused). Returns it with the
    /// number of unused codes: 0 for a complete code, > 0 incomplete; over-subscribed
    /// lengths are an error.
    fn new(lengths: &[u8]) -> R<(Huffman, i32)> {
        let mut count = [0u16; MAX_BITS + 1];
        for &l in lengths {
            count[l as usize] += 1;
        }
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left = (left << 1) - c as i32;
            if left < 0 {
                return Err("over-subscribed Huffman code".into());
            }
        }
        let mut offs = [0u16; MAX_BITS + 1];
        for len in 1..MAX_BITS {
            offs[len + 1] = offs[len] + count[len];
        }
        let used = lengths.iter().filter(|&&l| l != 0).count();
        let mut symbol = vec![0u16; used];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[offs[l as usize] as usize] = sym as u16;
                offs[l as usize] += 1;
            }
        }
        Ok((Huffman { count, symbol }, left))
    }

    fn decode(&self, b: &mut Bits) -> R<usize> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..=MAX_BITS {
            code |= b.bits(1)? as i32;
            let count = self.count[len] as i32;
            if code - count < first {
                return self
                    .symbol
                    .get((index + (code - first)) as usize)
                    .map(|&s| s as usize)
                    .ok_or_else(|| "bad Huffman code".to_string());
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("invalid Huffman code".into())
    }
}

const LEN_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// Decodes a raw DEFLATE stream (no zlib/gzip wrapper) of at most `max_out` bytes.
pub(crate) fn inflate(input: &[u8], max_out: usize) -> R<Vec<u8>> {
    let mut b = Bits { s: input, pos: 0, buf: 0, cnt: 0 };
    // Grown as data is produced rather than reserved from a declared size.
    let mut out = Vec::new();
    loop {
        let last = b.bits(1)?;
        match b.bits(2)? {
            0 => stored(&mut b, &mut out, max_out)?,
            1 => {
                let (lit, dist) = fixed()?;
                codes(&mut b, &mut out, max_out, &lit, &dist)?;
            }
            2 => {
                let (lit, dist) = dynamic(&mut b)?;
                codes(&mut b, &mut out, max_out, &lit, &dist)?;
            }
            _ => return Err("invalid block type 3".into()),
        }
        if last == 1 {
            return Ok(out);
        }
    }
}

fn stored(b: &mut Bits, out: &mut Vec<u8>, max_out: usize) -> R<()> {
    // A stored block starts on a byte boundary: drop the partial byte.
    b.buf = 0;
    b.cnt = 0;
    let hdr = b.s.get(b.pos..b.pos + 4).ok_or("stored block header is truncated")?;
    let len = u16::from_le_bytes([hdr[0], hdr[1]]);
    let nlen = u16::from_le_bytes([hdr[2], hdr[3]]);
    if len != !nlen {
        return Err("stored block length does not match its complement".into());
    }
    b.pos += 4;
    let data = b.s.get(b.pos..b.pos + len as usize).ok_or("stored block is truncated")?;
    if out.len() + data.len() > max_out {
        return Err(format!("decompresses to more than the declared {max_out} bytes"));
    }
    out.extend_from_slice(data);
    b.pos += len as usize;
    Ok(())
}

fn fixed() -> R<(Huffman, Huffman)> {
    let mut l = [0u8; 288];
    l[..144].fill(8);
    l[144..256].fill(9);
    l[256..280].fill(7);
    l[280..].fill(8);
    Ok((Huffman::new(&l)?.0, Huffman::new(&[5u8; 30])?.0))
}

fn dynamic(b: &mut Bits) -> R<(Huffman, Huffman)> {
    const ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
    let nlen = b.bits(5)? as usize + 257;
    let ndist = b.bits(5)? as usize + 1;
    let ncode = b.bits(4)? as usize + 4;
    if nlen > 286 || ndist > 30 {
        return Err("too many length or distance codes".into());
    }
    let mut lengths = [0u8; 320];
    for &o in &ORDER[..ncode] {
        lengths[o] = b.bits(3)? as u8;
    }
    let (lencode, left) = Huffman::new(&lengths[..19])?;
    if left != 0 {
        return Err("incomplete code-length code".into());
    }
    let mut i = 0;
    while i < nlen + ndist {
        let sym = lencode.decode(b)?;
        if sym < 16 {
            lengths[i] = sym as u8;
            i += 1;
            continue;
        }
        let (value, reps) = match sym {
            16 => {
                if i == 0 {
                    return Err("repeat with no previous length".into());
                }
                (lengths[i - 1], 3 + b.bits(2)? as usize)
            }
            17 => (0, 3 + b.bits(3)? as usize),
            _ => (0, 11 + b.bits(7)? as usize),
        };
        if i + reps > nlen + ndist {
            return Err("too many code lengths".into());
        }
        lengths[i..i + reps].fill(value);
        i += reps;
    }
    if lengths[256] == 0 {
        return Err("no end-of-block code".into());
    }
    let (lit, left) = Huffman::new(&lengths[..nlen])?;
    // An incomplete code is allowed only when it is a single code.
    if left > 0 && nlen - lit.count[0] as usize != 1 {
        return Err("incomplete literal/length code".into());
    }
    let (dist, left) = Huffman::new(&lengths[nlen..nlen + ndist])?;
    if left > 0 && ndist - dist.count[0] as usize != 1 {
        return Err("incomplete distance code".into());
    }
    Ok((lit, dist))
}

fn codes(b: &mut Bits, out: &mut Vec<u8>, max_out: usize, lit: &Huffman, dist: &Huffman) -> R<()> {
    loop {
        let sym = lit.decode(b)?;
        if sym < 256 {
            if out.len() >= max_out {
                return Err(format!("decompresses to more than the declared {max_out} bytes"));
            }
            out.push(sym as u8);
            continue;
        }
        if sym == 256 {
            return Ok(());
        }
        let s = sym - 257;
        if s >= 29 {
            return Err("invalid length symbol".into());
        }
        let len = LEN_BASE[s] as usize + b.bits(LEN_EXTRA[s] as u32)? as usize;
        let d = dist.decode(b)?;
        if d >= 30 {
            return Err("invalid distance symbol".into());
        }
        let back = DIST_BASE[d] as usize + b.bits(DIST_EXTRA[d] as u32)? as usize;
        if back > out.len() {
            return Err("back-reference before the start of the data".into());
        }
        if out.len() + len > max_out {
            return Err(format!("decompresses to more than the declared {max_out} bytes"));
        }
        // Byte by byte: the source may overlap what is being written (runs).
        let from = out.len() - back;
        for k in 0..len {
            out.push(out[from + k]);
        }
    }
}

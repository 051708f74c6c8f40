//! The DER (X.690) Quarry reads and writes itself: single-byte tags, definite minimal lengths, nothing else. Public
//! keys are parsed with it (`jwk`), and `quarry_core::der` builds its certificate surgery on it.

use std::fmt;

/// A DER structure Quarry did not expect; the detail says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerError(pub &'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DER: {}", self.0)
    }
}

impl std::error::Error for DerError {}

pub const TAG_SEQUENCE: u8 = 0x30;
pub const TAG_OCTET_STRING: u8 = 0x04;
pub const TAG_BIT_STRING: u8 = 0x03;
pub const TAG_OID: u8 = 0x06;
pub const TAG_BOOLEAN: u8 = 0x01;
pub const TAG_INTEGER: u8 = 0x02;

/// One tag-length-value element: its tag, its content, and the whole encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub encoded: &'a [u8],
}

/// Reads the element at the start of `input` and returns it with what follows it. Only single-byte tags and
/// definite lengths: DER allows nothing else for the types certificates use.
pub fn read(input: &[u8]) -> Result<(Element<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("empty input where an element was expected"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("multi-byte tags are not supported"));
    }
    let (&first, rest) = rest.split_first().ok_or(DerError("missing length"))?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(DerError("unsupported or truncated length"));
        }
        let len = rest[..count].iter().fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        if len < 0x80 || rest[0] == 0 {
            return Err(DerError("length not minimally encoded"));
        }
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err(DerError("content shorter than its length"));
    }
    let header_len = input.len() - rest.len();
    let element = Element { tag, content: &rest[..len], encoded: &input[..header_len + len] };
    Ok((element, &rest[len..]))
}

/// Reads the whole of `input` as one element of type `tag`.
pub fn read_exact(input: &[u8], tag: u8) -> Result<Element<'_>, DerError> {
    let (element, rest) = read(input)?;
    if element.tag != tag {
        return Err(DerError("unexpected tag"));
    }
    if !rest.is_empty() {
        return Err(DerError("trailing data"));
    }
    Ok(element)
}

/// The elements of a constructed element's content, in order.
pub fn children(mut content: &[u8]) -> Result<Vec<Element<'_>>, DerError> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (element, rest) = read(content)?;
        out.push(element);
        content = rest;
    }
    Ok(out)
}

/// Encodes `content` under `tag`.
pub fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The content of the DER INTEGER of the unsigned big-endian number `bytes`: without leading zero bytes, with one
/// added when the high bit is set (so the INTEGER stays positive); zero is a single zero byte.
pub fn unsigned_integer_content(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let mut content = bytes[start..].to_vec();
    if content.first().is_none_or(|first| first & 0x80 != 0) {
        content.insert(0, 0);
    }
    content
}

/// The DER INTEGER of the unsigned big-endian number `bytes`.
pub fn encode_unsigned_integer(bytes: &[u8]) -> Vec<u8> {
    encode(TAG_INTEGER, &unsigned_integer_content(bytes))
}

/// Encodes a dotted OID's arcs (the first two combined, as X.690 requires).
pub fn encode_oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    let mut push_arc = |mut arc: u64| {
        let mut base128 = vec![(arc & 0x7f) as u8];
        arc >>= 7;
        while arc > 0 {
            base128.push(0x80 | (arc & 0x7f) as u8);
            arc >>= 7;
        }
        content.extend(base128.iter().rev());
    };
    push_arc(arcs[0] * 40 + arcs[1]);
    arcs[2..].iter().for_each(|&arc| push_arc(arc));
    encode(TAG_OID, &content)
}

/// The magnitude of a DER INTEGER that must be positive: its content without the sign octet. Non-minimal
/// encodings and negative numbers are refused, so one number has one encoding.
pub fn read_unsigned_integer<'a>(element: &Element<'a>) -> Result<&'a [u8], DerError> {
    if element.tag != TAG_INTEGER {
        return Err(DerError("expected an INTEGER"));
    }
    match element.content {
        [] => Err(DerError("empty INTEGER")),
        [first, ..] if first & 0x80 != 0 => Err(DerError("negative INTEGER")),
        [0, second, ..] if second & 0x80 == 0 => Err(DerError("INTEGER not minimally encoded")),
        [0, rest @ ..] if !rest.is_empty() => Ok(rest),
        content => Ok(content),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        let integer = |content: &'static [u8]| Element { tag: TAG_INTEGER, content, encoded: &[] };
        assert_eq!(read_unsigned_integer(&integer(&[0x01, 0x00, 0x01])), Ok(&[0x01, 0x00, 0x01][..]));
        assert_eq!(read_unsigned_integer(&integer(&[0x00, 0x80])), Ok(&[0x80][..]));
        assert_eq!(read_unsigned_integer(&integer(&[0x00])), Ok(&[0x00][..]));
        for bad in [&[][..], &[0x80][..], &[0x00, 0x01][..], &[0xff, 0x01][..]] {
            assert!(read_unsigned_integer(&integer(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lengths_are_minimal_and_within_the_input() {
        assert!(read(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).is_err(), "a long form for a short length");
        assert!(read(&[0x30, 0x03, 0x00]).is_err(), "content shorter than its length");
        assert!(read(&[0x3f, 0x00]).is_err(), "a multi-byte tag");
        assert!(read_exact(&[0x05, 0x00, 0x00], 0x05).is_err(), "trailing data");
        assert_eq!(read_exact(&[0x05, 0x00], 0x05).unwrap().content, &[] as &[u8]);
    }
}

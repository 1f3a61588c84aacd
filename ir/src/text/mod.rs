//! Kiln's readable text format (`.kiln` files).
//!
//! [`print_graph`] writes a [`Graph`](crate::Graph) as text and
//! [`parse_graph`] reads it back. The two round-trip exactly: names, ops and
//! their attributes, types with symbolic dims, omitted optional inputs and
//! outputs, initializer data (bit for bit, NaN payloads included), the order
//! of graph inputs and outputs, the graph name and the opset imports.
//! Printing is deterministic: nodes in [`Graph::topo_order`](crate::Graph::topo_order),
//! initializers in creation order.
//!
//! ```text
//! kiln 0.1
//! graph "attention" opset("" = 23) {
//!   input %q: f32[batch, 4, seq, 16]
//!   input %k: f32[batch, 4, seq, 16]
//!
//!   init %scale: f32[] = 4.0
//!
//!   %kt: f32[batch, 4, 16, seq] = Transpose(%k) {perm = [0, 1, 3, 2]} @transpose_k
//!   %scores = MatMul(%q, %kt) @qk            # no type yet: before inference
//!   %y, _ = Dropout(%scores) @drop          # `_`: an omitted optional output
//!
//!   output %y
//! }
//! ```
//!
//! # Grammar
//!
//! Whitespace (newlines included) only separates tokens; `#` starts a
//! comment that runs to the end of the line. Lists take no trailing comma.
//!
//! ```text
//! file     := [ "kiln" "0.1" ] graph
//! graph    := "graph" (STRING | IDENT) [ "opset" "(" [ opset ("," opset)* ] ")" ]
//!             "{" stmt* "}"
//! opset    := (STRING | IDENT) "=" INT                  # domain = version
//! stmt     := input | init | node | output
//! input    := "input" VALUE [ ":" type ] [ "=" tensor ] # `= tensor`: a default (initializer)
//! init     := "init" VALUE ":" type "=" data            # the type must be fully known
//! output   := "output" VALUE ("," VALUE)*
//! node     := results "=" opref "(" [ arg ("," arg)* ] ")"
//!             [ "{" [ attr ("," attr)* ] "}" ] [ NODE ]
//! results  := result ("," result)* | "(" ")"
//! result   := "_" | VALUE [ ":" type ]                  # `_`: omitted optional output
//! arg      := "_" | VALUE                               # `_`: omitted optional input
//! opref    := [ (IDENT | STRING) "::" ] IDENT           # domain::Op; no domain is ONNX's
//! type     := DTYPE "[" [ dim ("," dim)* ] "]"          # f32[batch, seq+1, 64]; f32[] is a scalar
//! dim      := [ "-" ] term (("+" | "-") term)*
//! term     := factor (("*" | "/") factor)*               # `/` is floor division
//! factor   := INT | IDENT | STRING | "(" dim ")"        # IDENT and STRING are symbols
//! tensor   := type data                                 # a tensor with its own type
//! data     := "base64" STRING | literal
//! literal  := scalar | "[" [ literal ("," literal)* ] "]"  # nested once per axis
//! scalar   := [ "-" ] (NUMBER | "inf" | "nan") | "true" | "false"
//! attr     := (IDENT | STRING) "=" attrval
//! attrval  := [ "-" ] INT                               # int
//!           | float                                     # float
//!           | STRING                                    # string
//!           | "[" [ number ("," number)* ] "]"          # ints, or floats if any is a float
//!           | "ints" "[" "]" | "floats" "[" "]"         # empty lists
//!           | DTYPE                                     # element type: `to = f16`
//!           | tensor                                    # `value = i64[2] [1, 2]`
//! number   := [ "-" ] INT | float
//! float    := [ "-" ] (FLOAT | "inf") | [ "-" ] "nan" [ "(" HEX ")" ]  # nan(0x7fc00001): exact bits
//! VALUE    := "%" NAME                                  # a value
//! NODE     := "@" NAME                                  # a node name
//! NAME     := [A-Za-z0-9_./-]+ | STRING
//! IDENT    := [A-Za-z_?][A-Za-z0-9_.?]*
//! STRING   := '"' ... '"'   with escapes \\ \" \n \r \t \0 \u{HEX}
//! DTYPE    := f32 | f64 | f16 | bf16 | i8 | u8 | i16 | i32 | i64 | bool | i4 | u4
//! ```
//!
//! Conventions the printer follows (the parser accepts more):
//!
//! - Tensors of at most [`LITERAL_MAX_ELEMENTS`] elements and rank at most
//!   [`MAX_LITERAL_RANK`] whose values are all finite are written as
//!   literals, floats in Rust's shortest round-trip form (`0.1`, `1e-5`,
//!   `-0.0`, always with a `.` or an exponent); every other tensor as its raw
//!   little-endian bytes in base64 (4-bit types packed two to a byte, low
//!   nibble first, as ONNX stores them).
//! - A node's results carry their types when known; values without a type
//!   (graphs before inference) are printed without one.
//! - Node names are always printed (`@name`); a hand-written node without
//!   one is named `<Op>_<index of the node in the text>`.
//! - An initializer's type is its data's type.
//!
//! The parser accepts statements in any order and uses of values before their
//! definitions; the verifier, not the parser, rejects cycles. Errors are
//! [`IrError::Parse`](crate::IrError::Parse) with 1-based line and column
//! (in characters).

mod lexer;
mod parse;
mod print;

pub use parse::parse_graph;
pub use print::print_graph;

/// Largest element count that [`print_graph`] writes as a literal rather
/// than base64.
pub const LITERAL_MAX_ELEMENTS: usize = 16;

/// Highest rank written as a literal; a literal nests one list per axis and
/// the parser reads it recursively. Higher-rank tensors are written in base64.
pub const MAX_LITERAL_RANK: usize = 32;

/// The format version written in the `kiln` header.
pub const FORMAT_VERSION: &str = "0.1";

/// True for characters of a name written without quotes after `%` or `@`.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// True when `s` can follow `%` or `@` without quotes.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_name_char)
}

/// True for the first character of an identifier.
fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '?'
}

/// True for the later characters of an identifier. These are the characters
/// [`Dim::parse`](crate::Dim::parse) accepts in symbol names, so printed dims
/// lex as identifiers.
fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '?')
}

/// True when `s` is an identifier (attribute names, domains, dim symbols).
fn is_plain_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_ident_start) && chars.all(is_ident_char)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Marks a byte that is not a base64 symbol in [`BASE64_DECODE`].
const NOT_BASE64: u8 = 0xff;

/// Symbol value of each byte, or [`NOT_BASE64`].
const BASE64_DECODE: [u8; 256] = {
    let mut table = [NOT_BASE64; 256];
    let mut i = 0;
    while i < 64 {
        table[BASE64_ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Appends the standard (RFC 4648, padded) base64 encoding of `bytes`.
/// Called on consecutive pieces of one byte string, it gives the encoding
/// of the whole as long as every piece but the last has a length divisible
/// by 3.
fn encode_base64_into(bytes: &[u8], out: &mut String) {
    let mut encoded = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    let sym = |i: u32| BASE64_ALPHABET[(i & 63) as usize];
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        encoded.extend_from_slice(&[sym(n >> 18), sym(n >> 12), sym(n >> 6), sym(n)]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = (a as u32) << 16;
            encoded.extend_from_slice(&[sym(n >> 18), sym(n >> 12), b'=', b'=']);
        }
        [a, b] => {
            let n = (a as u32) << 16 | (b as u32) << 8;
            encoded.extend_from_slice(&[sym(n >> 18), sym(n >> 12), sym(n >> 6), b'=']);
        }
        _ => {}
    }
    out.push_str(std::str::from_utf8(&encoded).expect("base64 symbols are ASCII"));
}

/// Decodes standard padded base64, ignoring ASCII whitespace. On error,
/// returns the byte offset into `text` of the problem and a message.
fn decode_base64(text: &str) -> Result<Vec<u8>, (usize, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let mut acc = 0u32;
    let mut count = 0usize; // symbols in the current quartet
    let mut padding = 0usize;
    let mut quartet_start = 0usize;
    let mut i = 0;
    loop {
        // Fast path: whole quartets of plain symbols, which is all a printed
        // file has until its final quartet.
        if count == 0 && padding == 0 {
            while let Some(q) = bytes.get(i..i + 4) {
                let v = [
                    BASE64_DECODE[q[0] as usize],
                    BASE64_DECODE[q[1] as usize],
                    BASE64_DECODE[q[2] as usize],
                    BASE64_DECODE[q[3] as usize],
                ];
                if (v[0] | v[1] | v[2] | v[3]) >= 64 {
                    break;
                }
                let n =
                    (v[0] as u32) << 18 | (v[1] as u32) << 12 | (v[2] as u32) << 6 | v[3] as u32;
                out.extend_from_slice(&n.to_be_bytes()[1..]);
                i += 4;
            }
        }
        let Some(&c) = bytes.get(i) else { break };
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if count == 0 {
            quartet_start = i;
            if padding > 0 {
                return Err((i, "base64 data continues after its `=` padding".into()));
            }
        }
        if c == b'=' {
            if count < 2 {
                return Err((i, "misplaced `=` in base64 data".into()));
            }
            padding += 1;
            acc <<= 6;
        } else if padding > 0 {
            return Err((i, "base64 data continues after its `=` padding".into()));
        } else {
            let v = BASE64_DECODE[c as usize];
            if v == NOT_BASE64 {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err((i, format!("`{ch}` is not a base64 character")));
            }
            acc = acc << 6 | v as u32;
        }
        count += 1;
        if count == 4 {
            let b = acc.to_be_bytes();
            out.extend_from_slice(&b[1..4 - padding]);
            acc = 0;
            count = 0;
        }
        i += 1;
    }
    if count != 0 {
        return Err((
            quartet_start,
            "base64 data ends in the middle of a 4-character group".into(),
        ));
    }
    Ok(out)
}

/// Appends `s` as a double-quoted string with escapes.
fn write_quoted(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example at the top of the module docs parses and is printed
    /// back in the same form.
    #[test]
    fn module_doc_example_parses() {
        let source = include_str!("mod.rs");
        let example: String = source
            .lines()
            .skip_while(|l| *l != "//! ```text")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or("")))
            .collect();
        let graph = parse_graph(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_eq!(graph.node_count(), 3);
        let strip_comments = |s: &str| {
            s.lines()
                .map(|l| l.split(" #").next().unwrap_or("").trim_end().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip_comments(&print_graph(&graph)),
            strip_comments(&example)
        );
    }

    #[test]
    fn base64_round_trips_every_remainder() {
        for len in 0..10usize {
            let bytes: Vec<u8> = (0..len as u8)
                .map(|b| b.wrapping_mul(97).wrapping_add(200))
                .collect();
            let mut s = String::new();
            encode_base64_into(&bytes, &mut s);
            assert_eq!(s.len(), len.div_ceil(3) * 4);
            assert_eq!(decode_base64(&s).unwrap(), bytes, "{s}");
        }
    }

    #[test]
    fn base64_known_vectors() {
        let mut s = String::new();
        encode_base64_into(b"foobar", &mut s);
        assert_eq!(s, "Zm9vYmFy");
        s.clear();
        encode_base64_into(b"fo", &mut s);
        assert_eq!(s, "Zm8=");
        assert_eq!(decode_base64("Zm9v\n YmE=").unwrap(), b"fooba");
    }

    #[test]
    fn base64_decodes_wrapped_text() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 256) as u8).collect();
        let mut s = String::new();
        encode_base64_into(&bytes, &mut s);
        let wrapped: Vec<String> = s
            .as_bytes()
            .chunks(75)
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .collect();
        assert_eq!(decode_base64(&wrapped.join("\n  ")).unwrap(), bytes);
    }

    #[test]
    fn base64_errors_point_at_the_problem() {
        assert_eq!(decode_base64("Zm9*").unwrap_err().0, 3);
        assert_eq!(decode_base64("Zm8=Zm8=").unwrap_err().0, 4);
        assert_eq!(decode_base64("Zm9vY").unwrap_err().0, 4);
        assert_eq!(decode_base64("Z===").unwrap_err().0, 1);
    }

    #[test]
    fn quoting_escapes_what_it_must() {
        let mut s = String::new();
        write_quoted("a\"b\\c\nd\u{1}é", &mut s);
        assert_eq!(s, r#""a\"b\\c\nd\u{1}é""#);
        assert!(is_plain_name("/model/layers.0/attn/MatMul_output_0"));
        assert!(!is_plain_name("onnx::Gather_5"));
        assert!(!is_plain_name("a b"));
        assert!(is_plain_ident("ai.onnx") && !is_plain_ident("3d") && !is_plain_ident(""));
    }
}

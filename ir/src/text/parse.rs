//! The parser.
//!
//! Parsing runs in two steps. The first reads the text into statements,
//! building each op through [`Op::from_attrs`] (so attribute checks are the
//! ones ONNX import uses) and each tensor from its literal or base64 data.
//! The second creates every defined value, in text order, before adding
//! any node, which is what lets a node read a value defined further down.

use super::lexer::{error_at, line_col, Lexer, Tok, Token};
use super::{decode_base64, FORMAT_VERSION, MAX_LITERAL_RANK};
use crate::attr::{Attr, AttrBag, AttrError};
use crate::dim::{Dim, Poly};
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueId};
use crate::op::{BinaryOp, Op, ReduceKind, UnaryOp, VariadicOp};
use crate::tensor::Tensor;
use crate::types::TensorType;
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Reads a graph written in kiln's text format (see [the module docs](super)).
///
/// Errors are [`IrError::Parse`] with the line and column of the problem:
/// malformed syntax, unknown ops (with a suggestion when one is close),
/// invalid attributes, values used but never defined, values or nodes
/// defined twice, and tensor data that does not match its type.
pub fn parse_graph(text: &str) -> Result<Graph> {
    let mut parser = Parser::new(text)?;
    let ast = parser.file()?;
    build(text, ast)
}

/// A name and where it was written.
struct Named {
    name: String,
    pos: usize,
}

struct NodeStmt {
    results: Vec<Option<(Named, Option<TensorType>)>>,
    op: Op,
    op_pos: usize,
    args: Vec<Option<Named>>,
    name: Option<Named>,
}

enum Stmt {
    Input {
        value: Named,
        ty: Option<TensorType>,
        data: Option<Tensor>,
    },
    Init {
        value: Named,
        data: Tensor,
    },
    Node(NodeStmt),
    Output(Named),
}

struct Ast {
    name: String,
    opsets: BTreeMap<String, i64>,
    stmts: Vec<Stmt>,
}

/// One element of a tensor literal, converted once the dtype is known.
struct Scalar<'a> {
    negative: bool,
    tok: Tok<'a>,
    pos: usize,
}

struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    current: Token<'a>,
    /// Parentheses open in the dim expression being read.
    dim_depth: usize,
}

/// Deepest parenthesization accepted in a dim, so that hostile input cannot
/// exhaust the stack of the recursive-descent dim parser.
const MAX_DIM_DEPTH: usize = 200;

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Result<Parser<'a>> {
        let mut lexer = Lexer::new(src);
        let current = lexer.next_token()?;
        Ok(Parser {
            src,
            lexer,
            current,
            dim_depth: 0,
        })
    }

    fn peek(&self) -> &Tok<'a> {
        &self.current.tok
    }

    fn pos(&self) -> usize {
        self.current.pos
    }

    fn bump(&mut self) -> Result<Token<'a>> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.current, next))
    }

    fn error(&self, pos: usize, message: impl Into<String>) -> IrError {
        error_at(self.src, pos, message)
    }

    /// "expected X, found <current token>".
    fn unexpected(&self, expected: &str) -> IrError {
        self.error(
            self.pos(),
            format!("expected {expected}, found {}", self.peek().describe()),
        )
    }

    fn at_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    fn at_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Ident(q) if *q == s)
    }

    fn eat_punct(&mut self, p: &str) -> Result<bool> {
        if self.at_punct(p) {
            self.bump()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Consumes `p` or fails with "expected `p` <context>, found ...".
    fn expect_punct(&mut self, p: &str, context: &str) -> Result<usize> {
        if self.at_punct(p) {
            Ok(self.bump()?.pos)
        } else {
            Err(self.unexpected(&format!("`{p}` {context}")))
        }
    }

    // ---- file structure ----

    fn file(&mut self) -> Result<Ast> {
        if self.at_ident("kiln") {
            self.bump()?;
            match self.peek() {
                Tok::Number(v) if *v == FORMAT_VERSION => {
                    self.bump()?;
                }
                Tok::Number(v) => {
                    return Err(self.error(
                        self.pos(),
                        format!("unsupported format version `{v}` (this kiln reads version {FORMAT_VERSION})"),
                    ))
                }
                _ => return Err(self.unexpected("a format version after `kiln`")),
            }
        }
        if !self.at_ident("graph") {
            return Err(self.unexpected("`graph`"));
        }
        self.bump()?;
        let name = match self.peek() {
            Tok::Str(s) => s.to_string(),
            Tok::Ident(s) => s.to_string(),
            _ => return Err(self.unexpected("the graph's name (a string)")),
        };
        self.bump()?;
        let opsets = if self.at_ident("opset") {
            self.bump()?;
            self.opsets()?
        } else {
            BTreeMap::new()
        };
        self.expect_punct("{", "to open the graph body")?;
        let mut stmts = Vec::new();
        loop {
            match self.peek() {
                Tok::Punct("}") => break,
                Tok::Ident("input") => stmts.push(self.input()?),
                Tok::Ident("init") => stmts.push(self.init()?),
                Tok::Ident("output") => {
                    self.bump()?;
                    loop {
                        stmts.push(Stmt::Output(self.value_name("a graph output (`%name`)")?));
                        if !self.eat_punct(",")? {
                            break;
                        }
                    }
                }
                Tok::Value(_) | Tok::Ident("_") | Tok::Punct("(") => stmts.push(Stmt::Node(self.node()?)),
                Tok::Eof => return Err(self.unexpected(&format!("`}}` to close graph \"{name}\""))),
                _ => {
                    return Err(self.unexpected(
                        "`input`, `init`, `output`, a node (`%name = Op(...)`) or `}` to close the graph",
                    ))
                }
            }
        }
        self.bump()?;
        if *self.peek() != Tok::Eof {
            return Err(self.unexpected("end of input after the graph"));
        }
        Ok(Ast {
            name,
            opsets,
            stmts,
        })
    }

    fn opsets(&mut self) -> Result<BTreeMap<String, i64>> {
        self.expect_punct("(", "after `opset`")?;
        let mut opsets = BTreeMap::new();
        if self.eat_punct(")")? {
            return Ok(opsets);
        }
        loop {
            let pos = self.pos();
            let domain = match self.peek() {
                Tok::Str(s) => s.to_string(),
                Tok::Ident(s) => s.to_string(),
                _ => return Err(self.unexpected("an opset domain (a string; \"\" is ONNX's)")),
            };
            self.bump()?;
            self.expect_punct("=", &format!("after opset domain \"{domain}\""))?;
            let version = self.integer("an opset version")?;
            if opsets.insert(domain.clone(), version).is_some() {
                return Err(self.error(pos, format!("opset domain \"{domain}\" is given twice")));
            }
            if !self.eat_punct(",")? {
                self.expect_punct(")", "after the opsets")?;
                return Ok(opsets);
            }
        }
    }

    fn value_name(&mut self, expected: &str) -> Result<Named> {
        match self.peek() {
            Tok::Value(n) => {
                let name = n.to_string();
                let pos = self.bump()?.pos;
                Ok(Named { name, pos })
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn input(&mut self) -> Result<Stmt> {
        self.bump()?;
        let value = self.value_name("a value (`%name`) after `input`")?;
        let ty = if self.eat_punct(":")? {
            Some(self.ty()?)
        } else {
            None
        };
        let data = if self.eat_punct("=")? {
            let pos = self.pos();
            let data = self.tensor()?;
            if let Some(ty) = &ty {
                let data_ty = TensorType::fixed(data.dtype(), data.shape());
                let compatible = ty.dtype == data_ty.dtype
                    && ty.rank() == data_ty.rank()
                    && ty
                        .shape
                        .iter()
                        .zip(&data_ty.shape)
                        .all(|(a, b)| a.fixed().is_none() || a == b);
                if !compatible {
                    return Err(self.error(
                        pos,
                        format!("the default of input `%{}` is {data_ty}, which does not fit its type {ty}", value.name),
                    ));
                }
            }
            Some(data)
        } else {
            None
        };
        Ok(Stmt::Input { value, ty, data })
    }

    fn init(&mut self) -> Result<Stmt> {
        self.bump()?;
        let value = self.value_name("a value (`%name`) after `init`")?;
        self.expect_punct(
            ":",
            &format!("and a type after initializer `%{}`", value.name),
        )?;
        let ty_pos = self.pos();
        let ty = self.ty()?;
        let shape = self.fixed_shape(&ty, ty_pos, &format!("initializer `%{}`", value.name))?;
        self.expect_punct(
            "=",
            &format!("and the data of initializer `%{}`", value.name),
        )?;
        let data = self.data(ty.dtype, &shape)?;
        Ok(Stmt::Init { value, data })
    }

    // ---- nodes ----

    fn node(&mut self) -> Result<NodeStmt> {
        let mut results = Vec::new();
        if self.eat_punct("(")? {
            self.expect_punct(")", "(a node without results is written `() = Op(...)`)")?;
        } else {
            loop {
                match self.peek() {
                    Tok::Ident("_") => {
                        self.bump()?;
                        results.push(None);
                    }
                    Tok::Value(_) => {
                        let value = self.value_name("a result")?;
                        let ty = if self.eat_punct(":")? {
                            Some(self.ty()?)
                        } else {
                            None
                        };
                        results.push(Some((value, ty)));
                    }
                    _ => return Err(self.unexpected("a result (`%name` or `_`)")),
                }
                if !self.eat_punct(",")? {
                    break;
                }
            }
        }
        self.expect_punct("=", "after the results of a node")?;

        let op_pos = self.pos();
        let (first, first_quoted) = match self.peek() {
            Tok::Ident(s) => (s.to_string(), false),
            Tok::Str(s) => (s.to_string(), true),
            _ => return Err(self.unexpected("an op name")),
        };
        self.bump()?;
        let (domain, op_name) = if self.eat_punct("::")? {
            match self.peek() {
                Tok::Ident(s) => {
                    let name = s.to_string();
                    self.bump()?;
                    (first, name)
                }
                _ => return Err(self.unexpected(&format!("an op name after `{first}::`"))),
            }
        } else if first_quoted {
            return Err(self.unexpected(&format!("`::` and an op name after domain \"{first}\"")));
        } else {
            (String::new(), first)
        };

        self.expect_punct("(", &format!("after op `{op_name}`"))?;
        let mut args = Vec::new();
        if !self.at_punct(")") {
            loop {
                match self.peek() {
                    Tok::Ident("_") => {
                        self.bump()?;
                        args.push(None);
                    }
                    Tok::Value(_) => args.push(Some(self.value_name("an input")?)),
                    _ => {
                        return Err(self.unexpected(&format!(
                            "an input of `{op_name}` (`%name`, or `_` if omitted)"
                        )))
                    }
                }
                if !self.eat_punct(",")? {
                    break;
                }
            }
        }
        self.expect_punct(")", &format!("after the inputs of `{op_name}`"))?;

        let mut attrs: Vec<(String, Attr)> = Vec::new();
        if self.eat_punct("{")? && !self.eat_punct("}")? {
            loop {
                let pos = self.pos();
                let name = match self.peek() {
                    Tok::Ident(s) => s.to_string(),
                    Tok::Str(s) => s.to_string(),
                    _ => return Err(self.unexpected(&format!("an attribute name of `{op_name}`"))),
                };
                if attrs.iter().any(|(n, _)| *n == name) {
                    return Err(self.error(
                        pos,
                        format!("attribute `{name}` of `{op_name}` is given twice"),
                    ));
                }
                self.bump()?;
                self.expect_punct("=", &format!("after attribute `{name}`"))?;
                let value = self.attr_value(&name)?;
                attrs.push((name, value));
                if !self.eat_punct(",")? {
                    self.expect_punct("}", &format!("after the attributes of `{op_name}`"))?;
                    break;
                }
            }
        }

        let name = match self.peek() {
            Tok::NodeName(n) => {
                let name = n.to_string();
                let pos = self.bump()?.pos;
                Some(Named { name, pos })
            }
            _ => None,
        };
        let op = self.make_op(&op_name, &domain, attrs, op_pos)?;
        Ok(NodeStmt {
            results,
            op,
            op_pos,
            args,
            name,
        })
    }

    fn make_op(
        &self,
        name: &str,
        domain: &str,
        attrs: Vec<(String, Attr)>,
        pos: usize,
    ) -> Result<Op> {
        match Op::from_attrs(name, domain, AttrBag::new(attrs)) {
            Ok(op) => Ok(op),
            Err(AttrError::Invalid(message)) => {
                Err(self.error(pos, format!("op `{name}`: {message}")))
            }
            Err(AttrError::UnknownOp) => {
                let known = known_op_names();
                let onnx_domain = domain.is_empty() || domain == "ai.onnx";
                let message = if onnx_domain {
                    match closest(name, known.iter().copied()) {
                        Some(s) => format!("unknown op `{name}` (did you mean `{s}`?)"),
                        None => format!("unknown op `{name}`"),
                    }
                } else if known.contains(&name) {
                    format!("unknown op `{name}` in domain \"{domain}\" (`{name}` is an ONNX op: write it without a domain)")
                } else {
                    format!("unknown op `{name}` in domain \"{domain}\"")
                };
                Err(self.error(pos, message))
            }
        }
    }

    // ---- types and dims ----

    fn ty(&mut self) -> Result<TensorType> {
        let pos = self.pos();
        let dtype = match self.peek() {
            Tok::Ident(s) => dtype_named(s).map_err(|m| self.error(pos, m))?,
            _ => return Err(self.unexpected("an element type such as `f32`")),
        };
        self.bump()?;
        self.shape_after_dtype(dtype)
    }

    /// The `[dims]` part of a type whose dtype has been read.
    fn shape_after_dtype(&mut self, dtype: DType) -> Result<TensorType> {
        self.expect_punct(
            "[",
            &format!("after element type `{dtype}` (a scalar is `{dtype}[]`)"),
        )?;
        let mut shape = Vec::new();
        if !self.eat_punct("]")? {
            loop {
                shape.push(self.dim()?);
                if !self.eat_punct(",")? {
                    self.expect_punct("]", "after the dims of a type")?;
                    break;
                }
            }
        }
        Ok(TensorType::new(dtype, shape))
    }

    fn fixed_shape(&self, ty: &TensorType, pos: usize, what: &str) -> Result<Vec<usize>> {
        let shape = ty
            .shape
            .iter()
            .map(|d| d.fixed().and_then(|n| usize::try_from(n).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                self.error(pos, format!("{what} needs a fully known shape, found {ty}"))
            })?;
        shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| self.error(pos, format!("{what} has too many elements ({ty})")))?;
        Ok(shape)
    }

    fn dim(&mut self) -> Result<Dim> {
        let pos = self.pos();
        let poly = self.dim_expr()?;
        Dim::from_poly(poly).ok_or_else(|| self.error(pos, "dimension is negative"))
    }

    fn dim_expr(&mut self) -> Result<Poly> {
        let mut acc = if self.eat_punct("-")? {
            self.dim_term()?.scale(-1)
        } else {
            self.dim_term()?
        };
        loop {
            if self.eat_punct("+")? {
                acc = acc.add(&self.dim_term()?);
            } else if self.eat_punct("-")? {
                acc = acc.sub(&self.dim_term()?);
            } else {
                return Ok(acc);
            }
        }
    }

    fn dim_term(&mut self) -> Result<Poly> {
        let mut acc = self.dim_factor()?;
        loop {
            if self.eat_punct("*")? {
                acc = acc.mul(&self.dim_factor()?);
            } else if self.at_punct("/") {
                let pos = self.bump()?.pos;
                let divisor = self.dim_factor()?;
                acc = acc
                    .floor_div(&divisor)
                    .ok_or_else(|| self.error(pos, "division by zero in dimension"))?;
            } else {
                return Ok(acc);
            }
        }
    }

    fn dim_factor(&mut self) -> Result<Poly> {
        let pos = self.pos();
        let poly = match self.peek() {
            Tok::Punct("(") => {
                if self.dim_depth == MAX_DIM_DEPTH {
                    return Err(self.error(
                        pos,
                        format!("dimension nests parentheses more than {MAX_DIM_DEPTH} deep"),
                    ));
                }
                self.bump()?;
                self.dim_depth += 1;
                let inner = self.dim_expr();
                self.dim_depth -= 1;
                let inner = inner?;
                self.expect_punct(")", "to close the parenthesized dimension")?;
                return Ok(inner);
            }
            Tok::Number(s) => {
                if !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.error(pos, format!("dimension `{s}` is not an integer")));
                }
                Poly::constant(
                    s.parse::<i64>()
                        .map_err(|_| self.error(pos, format!("dimension `{s}` is too large")))?,
                )
            }
            Tok::Ident(s) => Poly::var(s),
            Tok::Str(s) => Poly::var(s),
            _ => {
                return Err(self.unexpected(
                    "a dimension (a size, a symbol, or an expression such as `seq+1`)",
                ))
            }
        };
        self.bump()?;
        Ok(poly)
    }

    // ---- tensor data ----

    /// A tensor with its own type: `i64[2] [1, 2]`.
    fn tensor(&mut self) -> Result<Tensor> {
        let pos = self.pos();
        let ty = self.ty()?;
        let shape = self.fixed_shape(&ty, pos, "a tensor")?;
        self.data(ty.dtype, &shape)
    }

    /// `base64 "..."` or a literal, for a tensor of the given type.
    fn data(&mut self, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        if self.at_ident("base64") {
            self.bump()?;
            let pos = self.pos();
            let Tok::Str(text) = self.peek() else {
                return Err(self.unexpected("a string of base64 data after `base64`"));
            };
            let bytes =
                decode_base64(text).map_err(|(offset, m)| self.error(pos + 1 + offset, m))?;
            self.bump()?;
            return Tensor::from_raw_le(dtype, shape, &bytes).map_err(|m| self.error(pos, m));
        }
        if shape.len() > MAX_LITERAL_RANK {
            return Err(self.unexpected(&format!(
                "`base64` data: literals nest one list per axis and are limited to rank {MAX_LITERAL_RANK}"
            )));
        }
        let mut scalars = Vec::new();
        self.literal(shape, 0, &mut scalars)?;
        self.tensor_from_scalars(dtype, shape, scalars)
    }

    /// Nested lists, one level per axis, with exactly the type's sizes.
    fn literal(&mut self, shape: &[usize], axis: usize, out: &mut Vec<Scalar<'a>>) -> Result<()> {
        if axis == shape.len() {
            out.push(self.scalar()?);
            return Ok(());
        }
        let len = shape[axis];
        if !self.at_punct("[") {
            return Err(self.unexpected(&format!(
                "`[` to start axis {axis} of a literal of shape {shape:?}"
            )));
        }
        self.bump()?;
        for i in 0..len {
            if i > 0 && !self.eat_punct(",")? {
                if self.at_punct("]") {
                    return Err(self.error(
                        self.pos(),
                        format!("axis {axis} of the literal has {i} elements, but the shape {shape:?} says {len}"),
                    ));
                }
                return Err(self.unexpected(&format!("`,` between elements of axis {axis}")));
            }
            self.literal(shape, axis + 1, out)?;
        }
        if !self.at_punct("]") {
            if len == 0 || self.at_punct(",") {
                return Err(self.error(
                    self.pos(),
                    format!(
                        "axis {axis} of the literal has more than {len} elements, but the shape {shape:?} says {len}"
                    ),
                ));
            }
            return Err(self.unexpected(&format!("`]` to end axis {axis} of the literal")));
        }
        self.bump()?;
        Ok(())
    }

    fn scalar(&mut self) -> Result<Scalar<'a>> {
        let pos = self.pos();
        let negative = self.eat_punct("-")?;
        match self.peek() {
            Tok::Number(_) | Tok::Ident("inf" | "nan" | "true" | "false") => {
                let tok = self.bump()?.tok;
                Ok(Scalar { negative, tok, pos })
            }
            _ => Err(self.unexpected("a number")),
        }
    }

    fn tensor_from_scalars(
        &self,
        dtype: DType,
        shape: &[usize],
        scalars: Vec<Scalar<'_>>,
    ) -> Result<Tensor> {
        fn array<T: Clone>(shape: &[usize], v: Vec<T>) -> ndarray::ArcArray<T, IxDyn> {
            ArrayD::from_shape_vec(IxDyn(shape), v)
                .expect("the literal was read to the shape's sizes")
                .into_shared()
        }
        Ok(match dtype {
            DType::F32 => Tensor::F32(array(
                shape,
                self.floats(&scalars, |s| s.parse::<f32>().ok(), "f32")?,
            )),
            DType::F64 => Tensor::F64(array(
                shape,
                self.floats(&scalars, |s| s.parse::<f64>().ok(), "f64")?,
            )),
            // f16 and bf16 values print through f32, which holds them exactly,
            // so reading through f32 gives back the same bits.
            DType::F16 => Tensor::F16(array(
                shape,
                self.floats(
                    &scalars,
                    |s| s.parse::<f32>().ok().map(f16::from_f32),
                    "f16",
                )?,
            )),
            DType::BF16 => Tensor::BF16(array(
                shape,
                self.floats(
                    &scalars,
                    |s| s.parse::<f32>().ok().map(bf16::from_f32),
                    "bf16",
                )?,
            )),
            DType::Bool => {
                let mut v = Vec::with_capacity(scalars.len());
                for s in &scalars {
                    v.push(match (&s.tok, s.negative) {
                        (Tok::Ident("true"), false) => true,
                        (Tok::Ident("false"), false) => false,
                        _ => return Err(self.error(s.pos, "a bool literal is `true` or `false`")),
                    });
                }
                Tensor::Bool(array(shape, v))
            }
            _ => {
                let (lo, hi) = int_range(dtype);
                let mut v = Vec::with_capacity(scalars.len());
                for s in &scalars {
                    let n = self.int_scalar(s, dtype)?;
                    if n < lo || n > hi {
                        return Err(self.error(
                            s.pos,
                            format!("{n} is out of range for {dtype} ([{lo}, {hi}])"),
                        ));
                    }
                    v.push(n);
                }
                Tensor::from_i64s(dtype, shape, &v)
            }
        })
    }

    /// Float elements: decimal numbers, `inf`, `nan`, each with an optional sign.
    fn floats<T: std::ops::Neg<Output = T>>(
        &self,
        scalars: &[Scalar<'_>],
        parse: impl Fn(&str) -> Option<T>,
        dtype: &str,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(scalars.len());
        for s in scalars {
            let text = match &s.tok {
                Tok::Number(t) if !t.starts_with("0x") && !t.starts_with("0X") => *t,
                Tok::Ident(t @ ("inf" | "nan")) => *t,
                _ => {
                    return Err(self.error(
                        s.pos,
                        format!("expected a {dtype} number, found {}", s.tok.describe()),
                    ))
                }
            };
            let v = parse(text)
                .ok_or_else(|| self.error(s.pos, format!("`{text}` is not a valid {dtype}")))?;
            out.push(if s.negative { -v } else { v });
        }
        Ok(out)
    }

    fn int_scalar(&self, s: &Scalar<'_>, dtype: DType) -> Result<i64> {
        let Tok::Number(text) = &s.tok else {
            return Err(self.error(
                s.pos,
                format!("expected a {dtype} integer, found {}", s.tok.describe()),
            ));
        };
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(
                s.pos,
                format!("`{text}` is not an integer, which a {dtype} element must be"),
            ));
        }
        let signed = if s.negative {
            format!("-{text}")
        } else {
            text.to_string()
        };
        signed
            .parse::<i64>()
            .map_err(|_| self.error(s.pos, format!("{signed} does not fit in 64 bits")))
    }

    /// An integer with an optional sign (opset versions).
    fn integer(&mut self, expected: &str) -> Result<i64> {
        let pos = self.pos();
        match self.number_attr()? {
            Attr::Int(v) => Ok(v),
            _ => Err(self.error(pos, format!("expected {expected} (an integer)"))),
        }
    }

    // ---- attributes ----

    fn attr_value(&mut self, name: &str) -> Result<Attr> {
        let pos = self.pos();
        match self.peek() {
            Tok::Str(s) => {
                let s = s.to_string();
                self.bump()?;
                Ok(Attr::String(s))
            }
            Tok::Punct("[") => self.list(None),
            Tok::Punct("-") | Tok::Number(_) | Tok::Ident("inf" | "nan") => self.number_attr(),
            Tok::Ident(kind @ ("ints" | "floats")) => {
                let ints = *kind == "ints";
                self.bump()?;
                self.list(Some(ints))
            }
            Tok::Ident(s) if DType::from_name(s).is_some() => {
                let dtype = dtype_named(s).map_err(|m| self.error(pos, m))?;
                self.bump()?;
                if !self.at_punct("[") {
                    return Ok(Attr::DType(dtype));
                }
                let ty = self.shape_after_dtype(dtype)?;
                let shape =
                    self.fixed_shape(&ty, pos, &format!("the tensor of attribute `{name}`"))?;
                Ok(Attr::Tensor(self.data(dtype, &shape)?))
            }
            _ => Err(self.unexpected(&format!(
                "a value for attribute `{name}` (a number, string, list, element type or tensor)"
            ))),
        }
    }

    /// `[a, b, ...]`: ints unless an element is a float (or `kind` says so).
    fn list(&mut self, ints_only: Option<bool>) -> Result<Attr> {
        self.expect_punct("[", "to start the list")?;
        let mut items = Vec::new();
        if !self.at_punct("]") {
            loop {
                let pos = self.pos();
                items.push((self.number_attr()?, pos));
                if !self.eat_punct(",")? {
                    break;
                }
            }
        }
        self.expect_punct("]", "to end the list")?;
        let any_float = items.iter().any(|(a, _)| matches!(a, Attr::Float(_)));
        if ints_only == Some(true) || (ints_only.is_none() && !any_float) {
            items
                .into_iter()
                .map(|(a, pos)| match a {
                    Attr::Int(v) => Ok(v),
                    _ => Err(self.error(pos, "an `ints` list holds integers only")),
                })
                .collect::<Result<Vec<i64>>>()
                .map(Attr::Ints)
        } else {
            Ok(Attr::Floats(
                items
                    .into_iter()
                    .map(|(a, _)| match a {
                        Attr::Float(v) => v,
                        Attr::Int(v) => v as f32,
                        _ => unreachable!("number_attr returns ints and floats only"),
                    })
                    .collect(),
            ))
        }
    }

    /// A signed number: an int when written with digits only, else an f32.
    /// `nan(0x7fc00001)` gives a NaN with exactly those bits.
    fn number_attr(&mut self) -> Result<Attr> {
        let pos = self.pos();
        let negative = self.eat_punct("-")?;
        let value = match self.peek() {
            Tok::Number(text) => {
                let text = *text;
                if text.bytes().all(|b| b.is_ascii_digit()) {
                    let signed = if negative {
                        format!("-{text}")
                    } else {
                        text.to_string()
                    };
                    let v = signed.parse::<i64>().map_err(|_| {
                        self.error(pos, format!("{signed} does not fit in 64 bits"))
                    })?;
                    self.bump()?;
                    return Ok(Attr::Int(v));
                }
                if text.starts_with("0x") || text.starts_with("0X") {
                    return Err(self.error(
                        pos,
                        format!("hex number `{text}` is only allowed in `nan(...)`"),
                    ));
                }
                text.parse::<f32>()
                    .map_err(|_| self.error(pos, format!("`{text}` is not a valid number")))?
            }
            Tok::Ident("inf") => f32::INFINITY,
            Tok::Ident("nan") => {
                self.bump()?;
                let v = if self.eat_punct("(")? {
                    self.nan_bits()?
                } else {
                    f32::NAN
                };
                return Ok(Attr::Float(if negative { -v } else { v }));
            }
            _ => return Err(self.unexpected("a number")),
        };
        self.bump()?;
        Ok(Attr::Float(if negative { -value } else { value }))
    }

    /// The `0x...)` of `nan(0x...)`.
    fn nan_bits(&mut self) -> Result<f32> {
        let pos = self.pos();
        let bits = match self.peek() {
            Tok::Number(t) if t.starts_with("0x") || t.starts_with("0X") => {
                u32::from_str_radix(&t[2..], 16)
                    .map_err(|_| self.error(pos, format!("`{t}` is not a 32-bit hex number")))?
            }
            _ => return Err(self.unexpected("the bits of a NaN in hex, such as `0x7fc00001`")),
        };
        let v = f32::from_bits(bits);
        if !v.is_nan() {
            return Err(self.error(pos, format!("0x{bits:08x} is not a NaN")));
        }
        self.bump()?;
        self.expect_punct(")", "after the bits of a NaN")?;
        Ok(v)
    }
}

fn dtype_named(s: &str) -> std::result::Result<DType, String> {
    DType::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        format!(
            "unknown element type `{s}` (expected one of {})",
            names.join(", ")
        )
    })
}

/// The values an integer dtype holds.
fn int_range(dtype: DType) -> (i64, i64) {
    match dtype {
        DType::I4 => (-8, 7),
        DType::U4 => (0, 15),
        DType::I8 => (i8::MIN as i64, i8::MAX as i64),
        DType::U8 => (0, u8::MAX as i64),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

/// Op types `Op::from_attrs` builds that the per-family `ALL` lists do not
/// cover. Only suggestions use this list; a name missing here is still
/// parsed, and a stale one is filtered out by [`known_op_names`].
const OTHER_OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "MatMulInteger",
    "QLinearMatMul",
    "Mod",
    "Clip",
    "Where",
    "Gelu",
    "LeakyRelu",
    "Elu",
    "HardSigmoid",
    "IsInf",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "RMSNormalization",
    "RotaryEmbedding",
    "Attention",
    "LinearAttention",
    "ArgMax",
    "ArgMin",
    "TopK",
    "CumSum",
    "Transpose",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "ScatterND",
    "Expand",
    "Tile",
    "Pad",
    "Cast",
    "CastLike",
    "Shape",
    "Size",
    "ConstantOfShape",
    "Range",
    "Trilu",
    "Constant",
    "Identity",
    "Dropout",
    "OneHot",
    "NonZero",
    "SoftmaxCrossEntropyLoss",
    "NegativeLogLikelihoodLoss",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
];

/// ONNX-domain op types kiln builds.
fn known_op_names() -> Vec<&'static str> {
    UnaryOp::ALL
        .iter()
        .map(|u| u.name())
        .chain(BinaryOp::ALL.iter().map(|b| b.name()))
        .chain(VariadicOp::ALL.iter().map(|v| v.name()))
        .chain(ReduceKind::ALL.iter().map(|r| r.name()))
        .chain(OTHER_OPS.iter().copied())
        .filter(|n| Op::from_attrs(n, "", AttrBag::default()) != Err(AttrError::UnknownOp))
        .collect()
}

/// Edit distance between two strings, over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// The candidate closest to `name` (ignoring case), if it is close enough
/// to be a plausible typo. Ties go to the alphabetically first.
fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Creates the graph: first every defined value in text order, then the
/// nodes, so that uses may come before definitions.
fn build(src: &str, ast: Ast) -> Result<Graph> {
    let err = |pos: usize, message: String| error_at(src, pos, message);
    let mut graph = Graph::new(ast.name);
    graph.opset_imports = ast.opsets;
    let mut defined_at: HashMap<String, usize> = HashMap::new();
    let mut define =
        |graph: &mut Graph, value: &Named, ty: Option<TensorType>| -> Result<ValueId> {
            if let Some(&first) = defined_at.get(&value.name) {
                let (line, _) = line_col(src, first);
                return Err(err(
                    value.pos,
                    format!("value `%{}` is already defined on line {line}", value.name),
                ));
            }
            defined_at.insert(value.name.clone(), value.pos);
            graph
                .add_value(value.name.clone(), ty)
                .map_err(|e| err(value.pos, e.to_string()))
        };

    let mut inputs = Vec::new();
    let mut nodes = Vec::new();
    let mut outputs = Vec::new();
    for stmt in ast.stmts {
        match stmt {
            Stmt::Input { value, ty, data } => {
                let id = define(&mut graph, &value, ty)?;
                graph.value_mut(id).initializer = data;
                inputs.push(id);
            }
            Stmt::Init { value, data } => {
                let id = define(
                    &mut graph,
                    &value,
                    Some(TensorType::fixed(data.dtype(), data.shape())),
                )?;
                graph.value_mut(id).initializer = Some(data);
            }
            Stmt::Node(node) => {
                for (value, ty) in node.results.iter().flatten() {
                    define(&mut graph, value, ty.clone())?;
                }
                nodes.push(node);
            }
            Stmt::Output(value) => outputs.push(value),
        }
    }
    graph.set_inputs(inputs);

    let resolve = |graph: &Graph, value: &Named| -> Result<ValueId> {
        graph.value_by_name(&value.name).ok_or_else(|| {
            let mut names: Vec<&str> = defined_at.keys().map(String::as_str).collect();
            names.sort_unstable();
            let hint = closest(&value.name, names.into_iter())
                .map(|s| format!(" (did you mean `%{s}`?)"))
                .unwrap_or_default();
            err(
                value.pos,
                format!("value `%{}` is not defined{hint}", value.name),
            )
        })
    };

    // Explicit node names first, so a generated name never takes one that a
    // later node spells out.
    let mut node_names: HashMap<&str, usize> = HashMap::new();
    for node in &nodes {
        if let Some(name) = &node.name {
            if let Some(&first) = node_names.get(name.name.as_str()) {
                let (line, _) = line_col(src, first);
                return Err(err(
                    name.pos,
                    format!("node `@{}` is already defined on line {line}", name.name),
                ));
            }
            node_names.insert(&name.name, name.pos);
        }
    }
    let mut generated: HashSet<String> = HashSet::new();
    let mut node_adds = Vec::with_capacity(nodes.len());
    for (index, node) in nodes.iter().enumerate() {
        let name = match &node.name {
            Some(n) if !n.name.is_empty() => n.name.clone(),
            _ => {
                let base = format!("{}_{index}", node.op.name());
                let mut candidate = base.clone();
                let mut k = 1;
                while node_names.contains_key(candidate.as_str()) || generated.contains(&candidate)
                {
                    candidate = format!("{base}.{k}");
                    k += 1;
                }
                generated.insert(candidate.clone());
                candidate
            }
        };
        node_adds.push(name);
    }
    for (node, name) in nodes.into_iter().zip(node_adds) {
        let inputs = node
            .args
            .iter()
            .map(|a| a.as_ref().map(|v| resolve(&graph, v)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let outputs = node
            .results
            .iter()
            .map(|r| r.as_ref().map(|(v, _)| resolve(&graph, v)).transpose())
            .collect::<Result<Vec<_>>>()?;
        graph
            .add_node_with_outputs(name, node.op, inputs, outputs)
            .map_err(|e| err(node.op_pos, e.to_string()))?;
    }
    for value in &outputs {
        let id = resolve(&graph, value)?;
        graph.add_output(id);
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_and_case_insensitive() {
        let known = known_op_names();
        assert!(
            known.contains(&"Add")
                && known.contains(&"LayerNormalization")
                && known.contains(&"ReduceSum")
        );
        assert_eq!(closest("Addd", known.iter().copied()), Some("Add"));
        assert_eq!(closest("matmul", known.iter().copied()), Some("MatMul"));
        assert_eq!(closest("Zzzzzzz", known.iter().copied()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// Every `Attr` kind, including floats lists, which no op has yet and
    /// so no graph-level test can cover.
    #[test]
    fn every_attr_kind_round_trips() {
        let attrs = vec![
            Attr::Int(-3),
            Attr::Int(i64::MIN),
            Attr::Int(i64::MAX),
            Attr::Float(0.1),
            Attr::Float(-0.0),
            Attr::Float(1e-5),
            Attr::Float(3.0e38),
            Attr::Float(f32::from_bits(1)),
            Attr::Float(f32::NAN),
            Attr::Float(-f32::NAN),
            Attr::Float(f32::from_bits(0x7fa0_0001)),
            Attr::Float(f32::INFINITY),
            Attr::Float(f32::NEG_INFINITY),
            Attr::String(String::new()),
            Attr::String("a \"b\"\n\t\\ é \u{7}".into()),
            Attr::Ints(vec![]),
            Attr::Ints(vec![1, -2, i64::MIN]),
            Attr::Floats(vec![]),
            Attr::Floats(vec![
                1.0,
                -2.5,
                f32::NAN,
                f32::INFINITY,
                f32::from_bits(0xffc0_0123),
            ]),
            Attr::Tensor(Tensor::vec_i64(&[1, -2, 3])),
            Attr::Tensor(Tensor::scalar_f32(f32::NAN)),
            Attr::Tensor(Tensor::zeros(DType::BF16, &[0, 3])),
            Attr::DType(DType::BF16),
            Attr::DType(DType::U4),
        ];
        for attr in attrs {
            let mut text = String::new();
            super::super::print::write_attr(&attr, &mut text);
            let mut parser = Parser::new(&text).unwrap();
            let back = parser
                .attr_value("x")
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(*parser.peek(), Tok::Eof, "{text}");
            assert_eq!(back, attr, "{text}");
            assert_eq!(back.kind(), attr.kind(), "{text}");
        }
    }

    #[test]
    fn lists_take_their_kind_from_their_elements() {
        let parse = |s: &str| Parser::new(s).unwrap().attr_value("x").unwrap();
        assert_eq!(parse("[1, 2]"), Attr::Ints(vec![1, 2]));
        assert_eq!(parse("[1, 2.5]"), Attr::Floats(vec![1.0, 2.5]));
        assert_eq!(parse("floats[1, 2]"), Attr::Floats(vec![1.0, 2.0]));
        assert!(Parser::new("ints[1.5]").unwrap().attr_value("x").is_err());
    }
}

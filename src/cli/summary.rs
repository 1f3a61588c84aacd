//! Human-readable formatting shared by the subcommands: types, shapes,
//! counts, sizes and tensor statistics.

use kiln::ir::{DType, Dim, Tensor, TensorType};

/// `i64[batch, seq]`, or `?` when the type is unknown.
pub fn type_text(ty: Option<&TensorType>) -> String {
    ty.map_or_else(|| "?".to_string(), |t| t.to_string())
}

/// `[2, 8, 256]`.
pub fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// `[batch, seq, 256]`.
pub fn dims_text(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// `124,697`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

/// `487.1 KiB`.
pub fn byte_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A number printed compactly: integers as such, floats with 4 significant
/// digits (scientific when very large or small).
pub fn number(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    let magnitude = v.abs();
    if !(1e-3..1e5).contains(&magnitude) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - magnitude.log10().floor() as i32).max(0) as usize;
    format!("{v:.decimals$}")
}

/// A short description of a tensor's values: the values themselves for a
/// handful of elements, otherwise min/max/mean (and how many are NaN or
/// infinite), or the count of `true`s for booleans.
pub fn value_stats(t: &Tensor) -> String {
    if t.is_empty() {
        return "(empty)".into();
    }
    let values = t.to_f64s();
    if t.dtype() == DType::Bool {
        let trues = values.iter().filter(|&&v| v != 0.0).count();
        return format!("true: {} of {}", thousands(trues as u64), thousands(values.len() as u64));
    }
    // Integers print as integers; only their mean is fractional.
    let element = |v: f64| if t.dtype().is_integer() { format!("{}", v as i64) } else { number(v) };
    if values.len() <= 4 {
        let shown: Vec<String> = values.iter().map(|&v| element(v)).collect();
        return if t.shape().is_empty() { shown.join("") } else { format!("[{}]", shown.join(", ")) };
    }
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let mut text = if finite.is_empty() {
        "no finite values".to_string()
    } else {
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        format!("min {}  max {}  mean {}", element(min), element(max), number(mean))
    };
    let nans = values.iter().filter(|v| v.is_nan()).count();
    let infs = values.iter().filter(|v| v.is_infinite()).count();
    if nans > 0 {
        text.push_str(&format!("  ({} NaN)", thousands(nans as u64)));
    }
    if infs > 0 {
        text.push_str(&format!("  ({} inf)", thousands(infs as u64)));
    }
    text
}

/// Lays out rows of cells as left-aligned columns separated by two spaces,
/// each line indented by `indent` spaces.
pub fn table(rows: &[Vec<String>], indent: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = " ".repeat(indent);
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(124697), "124,697");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn sizes() {
        assert_eq!(byte_size(100), "100 B");
        assert_eq!(byte_size(498788), "487.1 KiB");
        assert_eq!(byte_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn numbers() {
        assert_eq!(number(5.56364), "5.564");
        assert_eq!(number(-0.012345), "-0.01235");
        assert_eq!(number(1e-7), "1.000e-7");
        assert_eq!(number(12.0), "12.00");
        assert_eq!(number(f64::NAN), "nan");
    }

    #[test]
    fn stats() {
        let t = Tensor::from_f64s(DType::F32, &[5], &[1.0, 2.0, 3.0, f64::NAN, 4.0]);
        assert_eq!(value_stats(&t), "min 1.000  max 4.000  mean 2.500  (1 NaN)");
        assert_eq!(value_stats(&Tensor::scalar_f32(5.5)), "5.500");
        let i = Tensor::from_i64s(DType::I64, &[5], &[3, -100, 7, 250, 0]);
        assert_eq!(value_stats(&i), "min -100  max 250  mean 32.00");
        let b = Tensor::from_i64s(DType::Bool, &[3], &[1, 0, 1]);
        assert_eq!(value_stats(&b), "true: 2 of 3");
    }

    #[test]
    fn table_layout() {
        let rows = vec![vec!["a".to_string(), "bb".into(), "c".into()], vec!["ddd".into(), "e".into(), "f".into()]];
        assert_eq!(table(&rows, 2), "  a    bb  c\n  ddd  e   f\n");
    }
}

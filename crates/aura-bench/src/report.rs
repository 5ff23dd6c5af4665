//! Figures of each run, their aggregation over runs (median, min–max; ratios are taken
//! within a run, then aggregated), and the markdown they are printed as.

use std::fmt::Write as _;

/// Which way is better, for the reader.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Better {
    /// Throughput.
    Higher,
    /// Cost.
    Lower,
    /// Descriptive (where the CPU went): neither way is better.
    Info,
}

/// One figure of one run.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Table it belongs to.
    pub section: String,
    /// Row label.
    pub name: String,
    /// AURA's value.
    pub aura: Option<f64>,
    /// The peer's value, from the same run.
    pub peer: Option<f64>,
    /// Direction.
    pub better: Better,
    /// Decimals printed.
    pub decimals: usize,
}

/// A figure over all runs.
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// Table.
    pub section: String,
    /// Row.
    pub name: String,
    /// Per run.
    pub aura: Vec<f64>,
    /// Per run.
    pub peer: Vec<f64>,
    /// aura/peer per run (runs where both exist).
    pub ratio: Vec<f64>,
    /// Direction.
    pub better: Better,
    /// Decimals.
    pub decimals: usize,
}

/// Groups figures of all runs by (section, name), keeping first-seen order.
pub fn aggregate(runs: &[Vec<Figure>]) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = Vec::new();
    for run in runs {
        for f in run {
            let idx = match out.iter().position(|a| a.section == f.section && a.name == f.name) {
                Some(i) => i,
                None => {
                    out.push(Aggregate {
                        section: f.section.clone(),
                        name: f.name.clone(),
                        aura: Vec::new(),
                        peer: Vec::new(),
                        ratio: Vec::new(),
                        better: f.better,
                        decimals: f.decimals,
                    });
                    out.len() - 1
                }
            };
            let a = &mut out[idx];
            if let Some(v) = f.aura {
                a.aura.push(v);
            }
            if let Some(v) = f.peer {
                a.peer.push(v);
            }
            if let (Some(x), Some(y)) = (f.aura, f.peer)
                && y != 0.0
            {
                a.ratio.push(x / y);
            }
        }
    }
    out
}

/// (median, min, max); NaN for none.
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (median, v[0], v[n - 1])
}

/// A number with thousands separators when it has no decimals.
pub fn num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        return "—".into();
    }
    if decimals > 0 {
        return format!("{v:.decimals$}");
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// "median (min–max)", or just the value with one run.
pub fn cell(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "—".into();
    }
    let (median, min, max) = summary(values);
    if values.len() == 1 {
        return format!("**{}**", num(median, decimals));
    }
    format!("**{}** ({}–{})", num(median, decimals), num(min, decimals), num(max, decimals))
}

/// "median× (min–max)" of ratios.
pub fn ratio_cell(values: &[f64]) -> String {
    let (median, min, max) = summary(values);
    if values.len() == 1 {
        return format!("{}×", num(median, 2));
    }
    format!("{}× ({}–{})", num(median, 2), num(min, 2), num(max, 2))
}

/// The markdown table of one section.
pub fn table(aggs: &[Aggregate], section: &str, peer_label: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| figure | AURA | {peer_label} | AURA / {peer_label} |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for a in aggs.iter().filter(|a| a.section == section) {
        let arrow = match a.better {
            Better::Higher => " ↑",
            Better::Lower => " ↓",
            Better::Info => "",
        };
        let _ = writeln!(
            s,
            "| {}{arrow} | {} | {} | {} |",
            a.name,
            cell(&a.aura, a.decimals),
            cell(&a.peer, a.decimals),
            if a.ratio.is_empty() { "—".to_string() } else { ratio_cell(&a.ratio) }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio_within_runs() {
        let fig = |a, p| Figure {
            section: "s".into(),
            name: "x".into(),
            aura: Some(a),
            peer: Some(p),
            better: Better::Higher,
            decimals: 0,
        };
        let aggs = aggregate(&[vec![fig(10.0, 5.0)], vec![fig(30.0, 10.0)], vec![fig(20.0, 20.0)]]);
        assert_eq!(aggs.len(), 1);
        assert_eq!(summary(&aggs[0].aura), (20.0, 10.0, 30.0));
        assert_eq!(summary(&aggs[0].ratio), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[1.0, 2.0, 3.0, 4.0]).0, 2.5);
    }

    #[test]
    fn numbers() {
        assert_eq!(num(1234567.4, 0), "1,234,567");
        assert_eq!(num(999.0, 0), "999");
        assert_eq!(num(1.234, 2), "1.23");
    }
}

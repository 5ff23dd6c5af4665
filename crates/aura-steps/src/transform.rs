//! `transform`: a jq program (jaq, a maintained Rust implementation) applied to
//! `{input, steps}`. One result is the output; several become an array; none is `null`.
//! jaq values are not `Send`, so the program runs on a blocking thread and results come
//! back as JSON text.

use jaq_core::{
    Compiler, Ctx, Vars, data,
    load::{Arena, File, Loader},
    unwrap_valr,
};
use jaq_json::Val;
use serde_json::Value as Json;

use crate::{StepError, StepInput};

/// At most this many results are collected (an endless generator fails instead of
/// exhausting memory).
const MAX_RESULTS: usize = 10_000;

fn compile(program: &str) -> Result<jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>, String> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code: program, path: () })
        .map_err(|errs| format!("jq program does not parse: {errs:?}"))?;
    Compiler::default().with_funs(funs).compile(modules).map_err(|errs| {
        let names: Vec<String> =
            errs.into_iter().flat_map(|(_, es)| es.into_iter().map(|(name, _)| name.to_string())).collect();
        format!("jq program does not compile: undefined {}", names.join(", "))
    })
}

/// Compiles without running (for checks at registration).
pub fn compile_check(program: &str) -> Result<(), String> {
    compile(program).map(|_| ())
}

fn execute(program: &str, input: &str) -> Result<Json, String> {
    let filter = compile(program)?;
    let input =
        jaq_json::read::parse_single(input.as_bytes()).map_err(|e| format!("input is not JSON: {e:?}"))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let mut results = Vec::new();
    for out in filter.id.run((ctx, input)).map(unwrap_valr) {
        let val = out.map_err(|e| format!("jq error: {e}"))?;
        let text = val.to_string();
        results.push(
            serde_json::from_str(&text)
                .map_err(|e| format!("jq produced a value that is not JSON ({e}): {text}"))?,
        );
        if results.len() > MAX_RESULTS {
            return Err(format!("jq program produced more than {MAX_RESULTS} results"));
        }
    }
    Ok(match results.len() {
        0 => Json::Null,
        1 => results.remove(0),
        _ => Json::Array(results),
    })
}

pub async fn run(step: &StepInput<'_>) -> Result<Json, StepError> {
    let Some(Json::String(program)) = step.config.get("jq") else {
        return Err(StepError::Fatal("config.jq must be a string".into()));
    };
    let program = program.clone();
    let input = step.context().to_string();
    tokio::task::spawn_blocking(move || execute(&program, &input))
        .await
        .map_err(|e| StepError::Fatal(format!("jq panicked: {e}")))?
        .map_err(StepError::Fatal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_programs_and_reports_errors() {
        let input = json!({"input": {"xs": [1, 2, 3]}}).to_string();
        assert_eq!(execute(".input.xs | map(. * 2)", &input).unwrap(), json!([2, 4, 6]));
        assert_eq!(execute(".input.xs[]", &input).unwrap(), json!([1, 2, 3]));
        assert!(execute(".input.xs | nosuchfn", &input).unwrap_err().contains("nosuchfn"));
        assert!(execute("error(\"boom\")", &input).unwrap_err().contains("boom"));
        assert!(compile_check(".[").is_err());
    }
}

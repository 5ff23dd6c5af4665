//! Templated config values: every string containing `{{` or `{%` is rendered with
//! minijinja against `{input, steps}`. Strict undefined: `{{ input.missing }}` is an error
//! naming the variable, so a typo fails the step instead of sending an empty value.

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::{Map, Value as Json};

use crate::StepError;

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Whether `s` is rendered (contains `{{` or `{%`).
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Renders every templated string inside `value`.
pub fn render(value: &Json, context: &Json) -> Result<Json, StepError> {
    let env = env();
    let ctx = Value::from(minijinja::value::Serde(context));
    render_with(&env, value, &ctx)
}

fn render_with(env: &Environment<'_>, value: &Json, ctx: &Value) -> Result<Json, StepError> {
    Ok(match value {
        Json::String(s) if is_template(s) => Json::String(
            env.render_str(s, ctx)
                .map_err(|e| StepError::Fatal(format!("template {s:?}: {}", describe(&e))))?,
        ),
        Json::Array(items) => {
            Json::Array(items.iter().map(|v| render_with(env, v, ctx)).collect::<Result<_, _>>()?)
        }
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_with(env, v, ctx)?)))
                .collect::<Result<Map<_, _>, StepError>>()?,
        ),
        other => other.clone(),
    })
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{} ({detail})", e.kind()),
        None => e.to_string(),
    }
}

/// Parses (without rendering) every templated string inside `value`.
pub fn check_syntax(value: &Json) -> Result<(), String> {
    match value {
        Json::String(s) if is_template(s) => env()
            .template_from_str(s)
            .map(|_| ())
            .map_err(|e| format!("template {s:?} does not parse: {}", describe(&e))),
        Json::Array(items) => items.iter().try_for_each(check_syntax),
        Json::Object(map) => map.values().try_for_each(check_syntax),
        _ => Ok(()),
    }
}

/// Checks the variables every templated string inside `value` reads, where that can be
/// decided before a run: the root must be `input` or `steps` (or a minijinja global such as
/// `range`), and with `dependencies` given, `steps.<id>` must name one of them (outputs of
/// other steps are never passed). What `input.*` holds is only known at run time.
pub fn check_variables(value: &Json, dependencies: Option<&[String]>) -> Result<(), String> {
    match value {
        Json::String(s) if is_template(s) => {
            let env = env();
            let Ok(template) = env.template_from_str(s) else { return Ok(()) }; // see check_syntax
            let mut names: Vec<String> = template.undeclared_variables(true).into_iter().collect();
            names.sort();
            for name in names {
                let mut path = name.split('.');
                let root = path.next().unwrap_or_default();
                if root == "input" || env.globals().any(|(global, _)| global == root) {
                    continue;
                }
                if root != "steps" {
                    return Err(format!(
                        "template {s:?} reads {name:?}, which is never defined: templates see \
                         `input.<field>` and `steps.<dependency id>.output`"
                    ));
                }
                if let (Some(id), Some(deps)) = (path.next(), dependencies)
                    && !deps.iter().any(|d| d == id)
                {
                    return Err(format!(
                        "template {s:?} reads {name:?}, but the step does not depend on {id:?} \
                         (only dependencies' outputs are passed)"
                    ));
                }
            }
            Ok(())
        }
        Json::Array(items) => items.iter().try_for_each(|v| check_variables(v, dependencies)),
        Json::Object(map) => map.values().try_for_each(|v| check_variables(v, dependencies)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_input_and_step_outputs_and_rejects_unknown_variables() {
        let ctx = json!({"input": {"user": "ada"}, "steps": {"a": {"output": {"id": 7}}}});
        let out = render(&json!({"url": "http://x/{{ input.user }}/{{ steps.a.output.id }}", "n": 1}), &ctx)
            .unwrap();
        assert_eq!(out, json!({"url": "http://x/ada/7", "n": 1}));
        let err = render(&json!("{{ input.nope }}"), &ctx).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
        assert!(check_syntax(&json!("{{ broken")).is_err());
    }

    #[test]
    fn variables_that_can_never_be_defined_are_caught_before_a_run() {
        let deps = ["a".to_string()];
        let ok = json!({"url": "http://x/{{ input.id }}/{{ steps.a.output.n }}",
                        "body": ["{% for i in range(2) %}{{ i }}{{ loop.index }}{% endfor %}",
                                 "{% for m in input.items %}{{ m.name }}{% endfor %}"]});
        assert_eq!(check_variables(&ok, Some(&deps)), Ok(()));
        let err = check_variables(&json!({"u": "{{ inputs.id }}"}), None).unwrap_err();
        assert!(err.contains("\"inputs.id\"") && err.contains("never defined"), "{err}");
        assert!(check_variables(&json!(["{{ nope }}"]), Some(&deps)).is_err());
        let err = check_variables(&json!("{{ steps.b.output }}"), Some(&deps)).unwrap_err();
        assert!(err.contains("does not depend on \"b\""), "{err}");
        assert_eq!(check_variables(&json!("{{ steps.b.output }}"), None), Ok(()), "dependencies unknown");
    }
}

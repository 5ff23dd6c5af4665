//! `google.protobuf.Struct`/`Value` ⇄ `serde_json::Value`.
//!
//! prost-types' well-known types have no serde support, and the whole system passes JSON
//! around internally. Protobuf numbers are `f64`: integers beyond 2^53 lose precision, which
//! the README states.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

/// Converts a protobuf `Value` into JSON. A missing kind becomes `null`.
pub fn value_to_json(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_map(s)),
    }
}

/// Whole numbers come back as JSON integers so `{"n": 1}` round-trips as `1`, not `1.0`.
fn number_to_json(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        Json::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map(Json::Number).unwrap_or(Json::Null)
    }
}

/// Converts a protobuf `Struct` into a JSON object map.
pub fn struct_to_map(s: &Struct) -> Map<String, Json> {
    s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()
}

/// Converts a protobuf `Struct` into a JSON object.
pub fn struct_to_json(s: &Struct) -> Json {
    Json::Object(struct_to_map(s))
}

/// Converts JSON into a protobuf `Value`.
pub fn json_to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => {
            Kind::ListValue(ListValue { values: items.iter().map(json_to_value).collect() })
        }
        Json::Object(map) => Kind::StructValue(map_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// Converts a JSON object map into a protobuf `Struct`.
pub fn map_to_struct(map: &Map<String, Json>) -> Struct {
    Struct { fields: map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

/// Converts JSON into a `Struct`; a non-object becomes `None`.
pub fn json_to_struct(json: &Json) -> Option<Struct> {
    match json {
        Json::Object(map) => Some(map_to_struct(map)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_nested_json() {
        let original = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -3}});
        let back = value_to_json(&json_to_value(&original));
        assert_eq!(back, original);
    }
}

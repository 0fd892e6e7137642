//! Filters, ordering and paging, with the reference semantics every backend must follow.
//!
//! A [`Filter`] is a conjunction of conditions on fields. Semantics, checked by the
//! conformance suite:
//! - `eq(f, Null)` matches objects whose `f` is null; `ne(f, Null)` those where it is not.
//! - `ne(f, v)` also matches objects whose `f` is null (it is "not equal", SQL's
//!   `IS DISTINCT FROM`).
//! - `lt`, `lte`, `gt`, `gte` and `in` never match a null field; `in` with an empty list
//!   matches nothing.
//! - Values compare by [`Value::total_cmp`]: text by bytes, no case folding.
//!
//! Results of a find are sorted by the query's [`Order`]s, then by primary key ascending,
//! so every backend returns the same objects in the same order. Nulls sort first.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::registry::CollectionDef;
use crate::value::{Object, Value};

/// How one field is compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Predicate {
    /// Equal (or null, for `Null`).
    Eq(Value),
    /// Not equal; matches null fields too.
    Ne(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal.
    Lte(Value),
    /// Greater than.
    Gt(Value),
    /// Greater than or equal.
    Gte(Value),
    /// Equal to one of the values (which may not contain `Null`).
    In(Vec<Value>),
}

impl Predicate {
    /// Whether a field holding `value` (absent fields hold `Null`) satisfies the predicate.
    pub fn matches(&self, value: &Value) -> bool {
        let cmp = |other: &Value| value.total_cmp(other);
        match self {
            Predicate::Eq(v) => cmp(v) == Ordering::Equal,
            Predicate::Ne(v) => cmp(v) != Ordering::Equal,
            _ if value.is_null() => false,
            Predicate::Lt(v) => !v.is_null() && cmp(v) == Ordering::Less,
            Predicate::Lte(v) => !v.is_null() && cmp(v) != Ordering::Greater,
            Predicate::Gt(v) => !v.is_null() && cmp(v) == Ordering::Greater,
            Predicate::Gte(v) => !v.is_null() && cmp(v) != Ordering::Less,
            Predicate::In(vs) => vs.iter().any(|v| cmp(v) == Ordering::Equal),
        }
    }

    /// The values this predicate compares against.
    pub fn operands(&self) -> &[Value] {
        match self {
            Predicate::Eq(v)
            | Predicate::Ne(v)
            | Predicate::Lt(v)
            | Predicate::Lte(v)
            | Predicate::Gt(v)
            | Predicate::Gte(v) => std::slice::from_ref(v),
            Predicate::In(vs) => vs,
        }
    }

    pub(crate) fn operands_mut(&mut self) -> &mut [Value] {
        match self {
            Predicate::Eq(v)
            | Predicate::Ne(v)
            | Predicate::Lt(v)
            | Predicate::Lte(v)
            | Predicate::Gt(v)
            | Predicate::Gte(v) => std::slice::from_mut(v),
            Predicate::In(vs) => vs,
        }
    }
}

/// One condition: a field and how it is compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The field.
    pub field: String,
    /// The comparison.
    pub predicate: Predicate,
}

/// All conditions must hold. The empty filter matches every object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Filter {
    /// The conditions, all of which must hold.
    pub conditions: Vec<Condition>,
}

macro_rules! filter_method {
    ($(#[$doc:meta] $name:ident => $variant:ident),+ $(,)?) => {$(
        #[$doc]
        pub fn $name(self, field: impl Into<String>, value: impl Into<Value>) -> Self {
            self.with(field, Predicate::$variant(value.into()))
        }
    )+};
}

impl Filter {
    /// The filter that matches everything.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Adds a condition.
    pub fn with(mut self, field: impl Into<String>, predicate: Predicate) -> Self {
        self.conditions.push(Condition {
            field: field.into(),
            predicate,
        });
        self
    }

    filter_method! {
        /// Adds `field == value`.
        eq => Eq,
        /// Adds `field != value` (null fields match).
        ne => Ne,
        /// Adds `field < value`.
        lt => Lt,
        /// Adds `field <= value`.
        lte => Lte,
        /// Adds `field > value`.
        gt => Gt,
        /// Adds `field >= value`.
        gte => Gte,
    }

    /// Adds `field in values`.
    pub fn is_in<I, V>(self, field: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        self.with(
            field,
            Predicate::In(values.into_iter().map(Into::into).collect()),
        )
    }

    /// Whether `object` satisfies every condition.
    pub fn matches(&self, object: &Object) -> bool {
        self.conditions.iter().all(|c| {
            let value = object.get(&c.field).unwrap_or(&Value::Null);
            c.predicate.matches(value)
        })
    }
}

/// Sort direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smallest first (nulls first).
    Asc,
    /// Largest first (nulls last).
    Desc,
}

/// Sort by one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The field.
    pub field: String,
    /// The direction.
    pub direction: Direction,
}

/// What a find asks for: which objects, in which order, which page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Which objects.
    #[serde(default)]
    pub filter: Filter,
    /// Sort order; the primary key breaks ties.
    #[serde(default)]
    pub order: Vec<Order>,
    /// At most this many objects.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Leave out this many first objects.
    #[serde(default)]
    pub skip: u64,
}

impl Query {
    /// A query for the objects `filter` matches.
    pub fn new(filter: Filter) -> Self {
        Query {
            filter,
            ..Query::default()
        }
    }

    /// Sorts ascending by `field` (after any earlier order).
    pub fn order_asc(mut self, field: impl Into<String>) -> Self {
        self.order.push(Order {
            field: field.into(),
            direction: Direction::Asc,
        });
        self
    }

    /// Sorts descending by `field` (after any earlier order).
    pub fn order_desc(mut self, field: impl Into<String>) -> Self {
        self.order.push(Order {
            field: field.into(),
            direction: Direction::Desc,
        });
        self
    }

    /// Returns at most `limit` objects.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Leaves out the first `skip` objects.
    pub fn skip(mut self, skip: u64) -> Self {
        self.skip = skip;
        self
    }

    /// Applies the query to objects of collection `def` held in memory: filter, sort
    /// (orders, then primary key), skip, limit. The reference for every backend.
    pub fn apply<'o, I>(&self, def: &CollectionDef, objects: I) -> Vec<&'o Object>
    where
        I: IntoIterator<Item = &'o Object>,
    {
        let mut found: Vec<&Object> = objects
            .into_iter()
            .filter(|o| self.filter.matches(o))
            .collect();
        found.sort_by(|a, b| self.compare(def, a, b));
        let skip = usize::try_from(self.skip).unwrap_or(usize::MAX);
        let limit = self
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        found.into_iter().skip(skip).take(limit).collect()
    }

    fn compare<'o2>(&self, def: &CollectionDef, a: &'o2 Object, b: &'o2 Object) -> Ordering {
        static NULL: Value = Value::Null;
        let get = |o: &'o2 Object, f: &str| -> &'o2 Value { o.get(f).unwrap_or(&NULL) };
        for order in &self.order {
            let ord = get(a, &order.field).total_cmp(get(b, &order.field));
            let ord = match order.direction {
                Direction::Asc => ord,
                Direction::Desc => ord.reverse(),
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        for pk in def.pk_fields() {
            let ord = get(a, pk).total_cmp(get(b, pk));
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object;

    #[test]
    fn ne_matches_null_fields_and_lt_does_not() {
        let obj = object! { "n" => Value::Null };
        assert!(Filter::all().ne("n", 3).matches(&obj));
        assert!(!Filter::all().lt("n", 3).matches(&obj));
        assert!(Filter::all().eq("n", Value::Null).matches(&obj));
        assert!(Filter::all().eq("missing", Value::Null).matches(&obj));
    }

    #[test]
    fn empty_in_matches_nothing() {
        let obj = object! { "n" => 1 };
        assert!(!Filter::all().is_in("n", Vec::<i64>::new()).matches(&obj));
    }
}

//! Rules for a listener's `authorization:` list (the patterns are checked by
//! the same code that builds the policy, `admission::authorization`).

use super::Rules;
use crate::admission::authorization::check_rule;
use crate::config::model::Listener;

impl Rules<'_> {
    pub(super) fn authorization(&mut self, l: &Listener, base: &str) {
        let Some(rules) = &l.authorization else {
            return;
        };
        for (i, rule) in rules.iter().enumerate() {
            for (key, message) in check_rule(rule) {
                let path = if key.is_empty() {
                    format!("{base}.authorization[{i}]")
                } else {
                    format!("{base}.authorization[{i}].{key}")
                };
                self.value(&path, message);
            }
        }
    }
}

//! The thread rule is a type: these programs must not compile.

#[test]
fn thread_rule_is_enforced_by_the_compiler() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

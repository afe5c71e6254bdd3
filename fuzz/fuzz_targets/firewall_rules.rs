//! The firewall rule parser on arbitrary text (a whole rule file), then the nftables ruleset
//! made from what parsed. A rule that parses must print in the canonical form and parse back
//! to itself; the ruleset must keep every domain name and rule inside its statements (no
//! quote or brace from the input can reach nft).
#![no_main]

use bulkhead_net::firewall::{parse_rules, Rule, RuleSet};
use bulkhead_net::nft::{ruleset, Client, ClientFirewall, NetPlan, ResolvedRule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fw = match parse_rules(text, 1_000) {
        RuleSet::Rules(rules) => {
            for r in &rules {
                let shown = r.to_string();
                assert_eq!(Rule::parse(&shown, 0).as_ref(), Ok(r), "{shown}");
            }
            ClientFirewall::Rules(
                rules
                    .into_iter()
                    .map(|rule| ResolvedRule {
                        rule,
                        host_addrs: vec!["192.0.2.1".parse().expect("fixed address")],
                    })
                    .collect(),
            )
        }
        RuleSet::Broken(why) => ClientFirewall::Broken(why),
    };
    let plan = NetPlan {
        uplink: Some("up0".into()),
        dns: vec!["192.0.2.53".parse().expect("fixed address")],
        clients: vec![Client {
            domain: text.lines().next().unwrap_or("").chars().take(40).collect(),
            vif: "vif0.2".into(),
            firewall: fw,
            may_reach: vec![],
        }],
    };
    let out = ruleset(&plan, 1_000);
    // Braces stay balanced: nothing from the input opened or closed a block.
    let opens = out.matches('{').count();
    let closes = out.matches('}').count();
    assert_eq!(opens, closes, "{out}");
});

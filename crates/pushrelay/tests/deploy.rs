//! What can be checked of `deploy/` without a cluster: every YAML and JSON file parses; the
//! Kubernetes Deployments run real binaries with probes on `/readyz` and `/healthz`, each has
//! a PodDisruptionBudget, and each Kafka stage scales on the lag of its own consumer group
//! and input topic; the Dockerfile builds every binary of the workspace; the Compose file runs
//! the four stages on a KRaft Kafka; every metric the Grafana dashboard queries is one the
//! code exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pushrelay_kafka::KafkaArgs;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn deploy_files(extensions: &[&str]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files(&root().join("deploy"), &mut all);
    all.retain(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
    });
    all.sort();
    all
}

fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).expect("read");
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not valid YAML: {err}", path.display()))
}

/// The binaries the workspace builds (`[[bin]]` names).
fn workspace_binaries() -> BTreeSet<String> {
    let mut manifests = Vec::new();
    files(&root().join("crates"), &mut manifests);
    manifests
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "Cargo.toml"))
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).expect("manifest");
            text.split("[[bin]]")
                .skip(1)
                .filter_map(|section| {
                    section
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("name = "))
                        .map(|n| n.trim_matches('"').to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `pushrelay_*` metric name the code registers.
fn exported_metrics() -> BTreeSet<String> {
    let mut sources = Vec::new();
    files(&root().join("crates"), &mut sources);
    let mut names = BTreeSet::new();
    for path in sources.iter().filter(|p| {
        p.extension().is_some_and(|e| e == "rs") && p.components().any(|c| c.as_os_str() == "src")
    }) {
        let text = std::fs::read_to_string(path).expect("source");
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("pushrelay_")
                && piece
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(piece.to_owned());
            }
        }
    }
    names
}

fn metric_names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("pushrelay_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_yaml_and_json_file_parses() {
    let yaml = deploy_files(&["yaml", "yml"]);
    assert!(yaml.len() >= 8, "manifests found: {yaml:?}");
    for path in &yaml {
        assert!(!yaml_docs(path).is_empty(), "{} is empty", path.display());
    }
    for path in deploy_files(&["json"]) {
        let text = std::fs::read_to_string(&path).expect("read");
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|err| panic!("{} is not valid JSON: {err}", path.display()));
    }
}

#[test]
fn kubernetes_stages_have_probes_budgets_and_lag_scaling() {
    let dir = root().join("deploy/k8s");
    let binaries = workspace_binaries();
    let defaults = KafkaArgs::new("unused");
    let topics = defaults.topics();
    // Each Kafka stage: its binary, its default consumer group, its input topic.
    let stages = [
        (
            "pushrelay-auth",
            pushrelay_auth_coalesce::StageArgs::new(defaults.clone()).group,
            topics.mailbox_changes.clone(),
        ),
        (
            "pushrelay-fanout",
            pushrelay_fanout::FanoutArgs::new(defaults.clone()).group,
            topics.unread_counts.clone(),
        ),
        (
            "pushrelay-deliver",
            pushrelay_deliver::DeliverArgs::new(defaults.clone()).group,
            topics.push_requests.clone(),
        ),
    ];
    let mut docs = Vec::new();
    let mut listed = BTreeSet::new();
    for path in deploy_files(&["yaml"]) {
        if !path.starts_with(&dir) {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name == "kustomization.yaml" {
            for doc in yaml_docs(&path) {
                for resource in doc["resources"].as_vec().cloned().unwrap_or_default() {
                    listed.insert(resource.as_str().unwrap_or_default().to_owned());
                }
            }
        } else {
            listed.insert(format!("!{name}"));
            docs.extend(yaml_docs(&path));
        }
    }
    for missing in listed.iter().filter_map(|n| n.strip_prefix('!')) {
        assert!(
            listed.contains(missing),
            "kustomization.yaml does not list {missing}"
        );
    }
    let kind = |doc: &Yaml| doc["kind"].as_str().unwrap_or_default().to_owned();
    let deployments: Vec<&Yaml> = docs.iter().filter(|d| kind(d) == "Deployment").collect();
    assert_eq!(deployments.len(), 4, "ingress and the three Kafka stages");
    let mut commands = BTreeSet::new();
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().expect("name");
        let labels = &deployment["spec"]["selector"]["matchLabels"];
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let command = container["command"][0]
            .as_str()
            .expect("command")
            .to_owned();
        assert!(
            binaries.contains(&command),
            "{name} runs {command}, not a workspace binary"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz"),
            "{name}"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{name}"
        );
        let admin = container["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .find(|p| p["name"].as_str() == Some("admin"))
            .and_then(|p| p["containerPort"].as_i64());
        assert_eq!(admin, Some(9090), "{name}: probes reach the admin port");
        assert!(
            docs.iter().any(|d| kind(d) == "PodDisruptionBudget"
                && &d["spec"]["selector"]["matchLabels"] == labels),
            "{name} has a PodDisruptionBudget"
        );
        let scaled = docs
            .iter()
            .find(|d| {
                kind(d) == "ScaledObject"
                    && d["spec"]["scaleTargetRef"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("{name} has a KEDA ScaledObject"));
        if let Some((_, group, topic)) = stages.iter().find(|(bin, _, _)| *bin == command) {
            let trigger = &scaled["spec"]["triggers"][0];
            assert_eq!(
                trigger["type"].as_str(),
                Some("kafka"),
                "{name} scales on lag"
            );
            assert_eq!(
                trigger["metadata"]["consumerGroup"].as_str(),
                Some(group.as_str()),
                "{name}"
            );
            assert_eq!(
                trigger["metadata"]["topic"].as_str(),
                Some(topic.as_str()),
                "{name}"
            );
        }
        commands.insert(command);
    }
    for (bin, _, _) in &stages {
        assert!(commands.contains(*bin), "{bin} is deployed");
    }
    assert!(commands.contains("pushrelay-ingress"));
}

#[test]
fn the_image_builds_every_binary_and_compose_runs_the_stages() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let binaries = workspace_binaries();
    assert_eq!(binaries.len(), 6, "{binaries:?}");
    for bin in &binaries {
        assert!(
            dockerfile.contains(&format!("--bin {bin} "))
                || dockerfile.contains(&format!("--bin {bin}\n")),
            "the image builds {bin}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{bin} "))
                || dockerfile.contains(&format!("target/release/{bin}\n")),
            "the image ships {bin}"
        );
    }
    let compose = yaml_docs(&root().join("deploy/compose/docker-compose.yml"));
    let services = compose[0]["services"].as_hash().expect("services");
    let kafka = &compose[0]["services"]["kafka"];
    assert!(
        kafka["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("apache/kafka:"))
    );
    assert_eq!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller"),
        "KRaft"
    );
    let mut commands = BTreeSet::new();
    for (name, service) in services {
        if let Some(command) = service["command"][0].as_str() {
            assert!(binaries.contains(command), "{name:?} runs {command}");
            commands.insert(command.to_owned());
        }
    }
    for bin in [
        "pushrelay-ingress",
        "pushrelay-auth",
        "pushrelay-fanout",
        "pushrelay-deliver",
    ] {
        assert!(commands.contains(bin), "compose runs {bin}");
    }
}

#[test]
fn every_dashboard_metric_is_exported() {
    let exported = exported_metrics();
    assert!(exported.len() > 20, "{exported:?}");
    let text =
        std::fs::read_to_string(root().join("deploy/grafana/pushrelay.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names_in(expr) {
                let base = ["_sum", "_count", "_bucket"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
                    .unwrap_or(&name)
                    .to_owned();
                assert!(
                    exported.contains(&base),
                    "the dashboard queries {name}, which no stage exports (panel {:?})",
                    panel["title"]
                );
                queried.insert(base);
            }
        }
    }
    for stage in ["ingress", "auth", "auth_coalesce", "fanout", "deliver"] {
        assert!(
            queried
                .iter()
                .any(|m| m.starts_with(&format!("pushrelay_{stage}_"))),
            "the dashboard shows the {stage} stage"
        );
    }
}

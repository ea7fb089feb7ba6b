//! `deploy/`: each piece checked by the tool that runs it, or as close to
//! it as this machine allows — nats-server itself for the NATS configs and
//! stream definitions (a real 3-node cluster), kubernetes-validate for the
//! manifests, forewarn's own command line for every command they run.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use super::nats::{runtime, wait_until};
use super::{forewarn, free_port, repo, text};

#[test]
fn the_nats_configs_pass_nats_server_t() {
    for (file, name) in [("deploy/nats/nats-server.conf", ""), ("deploy/nats/cluster.conf", "nats-0")] {
        let out = Command::new("nats-server")
            .args(["-t", "-c"])
            .arg(repo(file))
            .env("NATS_SERVER_NAME", name)
            .output()
            .expect("nats-server runs");
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success() && said.contains("is valid"), "{file}: {said}");
    }
}

/// Three nats-servers from the cluster config (loopback ports and names
/// substituted), killed when dropped.
struct Cluster {
    nodes: Vec<Child>,
    client_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let conf = fs::read_to_string(repo("deploy/nats/cluster.conf")).expect("cluster.conf");
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let mut text = conf
                .replace("port: 4222", &format!("port: {}", client_ports[i]))
                .replace("http_port: 8222\n", "")
                .replace("port: 6222", &format!("port: {}", route_ports[i]))
                .replace("/data/jetstream", &dir.path().join(format!("js{i}")).to_string_lossy());
            for (j, port) in route_ports.iter().enumerate() {
                text = text.replace(&format!("nats-{j}.nats:6222"), &format!("127.0.0.1:{port}"));
            }
            assert!(!text.contains("6222") && !text.contains(".nats:"), "every address substituted:\n{text}");
            let path = dir.path().join(format!("n{i}.conf"));
            let text = text.replace("cluster {", "cluster {\n  host: 127.0.0.1");
            fs::write(&path, format!("host: 127.0.0.1\n{text}")).expect("conf");
            let log = fs::File::create(dir.path().join(format!("n{i}.log"))).expect("a log");
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&path)
                .env("NATS_SERVER_NAME", format!("nats-{i}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server starts");
            nodes.push(child);
        }
        for port in &client_ports {
            wait_until("a cluster node to listen", || std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok());
        }
        Cluster { nodes, client_ports, _dir: dir }
    }

    fn urls(&self) -> String {
        self.client_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

#[test]
fn a_three_node_cluster_from_the_deploy_config_takes_the_stream_definitions_and_forewarn_accepts_them() {
    let cluster = Cluster::start();
    let first = format!("nats://127.0.0.1:{}", cluster.client_ports[0]);
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(&first).await.expect("connect");
        let mut names = Vec::new();
        for entry in fs::read_dir(repo("deploy/nats/streams")).expect("stream definitions") {
            let path = entry.expect("an entry").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let definition: Value = serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("JSON");
            let name = definition["name"].as_str().expect("a name").to_string();
            assert_eq!(definition["num_replicas"], 3, "{}", path.display());
            // JetStream needs a meta leader first: ask until the cluster answers.
            let start = std::time::Instant::now();
            loop {
                let subject = format!("$JS.API.STREAM.CREATE.{name}");
                let answer = client.request(subject, definition.to_string().into()).await;
                let reply: Value =
                    answer.ok().and_then(|m| serde_json::from_slice(&m.payload).ok()).unwrap_or_default();
                if reply["config"]["name"] == name.as_str() {
                    assert_eq!(reply["config"]["num_replicas"], 3);
                    break;
                }
                assert!(start.elapsed() < super::nats::PATIENCE, "{name} not created: {reply}");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            names.push(name);
        }
        names.sort();
        assert_eq!(names, ["ALERTS", "CONTACTS", "DEADLETTERS", "FOREWARN_FACTS", "SCANS"]);
        // forewarn, configured for the cluster, finds them as it wants them.
        let nats = forewarn::config::Nats { url: cluster.urls(), ..Default::default() };
        let client = forewarn::nats::connect::connect(&nats, "deploy test").await.expect("forewarn connects");
        let js = forewarn::nats::connect::jetstream(client);
        let config = forewarn::config::Config::load(&repo("deploy/kubernetes/forewarn.toml")).expect("the k8s config");
        assert_eq!(config.streams.replicas, 3);
        forewarn::nats::connect::ensure_streams(&js, &config.streams).await.expect("the definitions match forewarn's");
        let mut alerts = js.get_stream("ALERTS").await.expect("ALERTS");
        let info = alerts.info().await.expect("info");
        let replicas = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
        assert_eq!(replicas, 2, "a leader and two replicas: {:?}", info.cluster);
    });
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = fs::read_to_string(path).expect("manifests");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The ConfigMaps, made from `deploy/kubernetes/forewarn.toml` and `rules/`.
fn configmaps() -> String {
    let mut rules = BTreeMap::new();
    let mut stack = vec![repo("rules")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("rules") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(repo("rules")).expect("inside").to_string_lossy().replace('/', "--");
            rules.insert(relative, fs::read_to_string(&path).expect("a text file"));
        }
    }
    let labels = json!({ "app.kubernetes.io/name": "forewarn" });
    let config = fs::read_to_string(repo("deploy/kubernetes/forewarn.toml")).expect("forewarn.toml");
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "forewarn-config", "labels": labels },
              "data": { "forewarn.toml": config } },
            { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "forewarn-rules", "labels": labels },
              "data": rules },
        ],
    });
    serde_json::to_string_pretty(&list).expect("JSON") + "\n"
}

/// The manifests validate against the Kubernetes schemas; the ConfigMaps
/// hold exactly `rules/` and the config (`UPDATE_EXPECT=1` regenerates
/// them); each pod's command line, with its index, starts forewarn up to
/// connecting to NATS; the slices of the pods cover every partition once;
/// the ServiceMonitor finds the Services.
#[test]
fn the_kubernetes_manifests_validate_and_each_pod_starts_its_own_slice() {
    expect_test::expect_file!["../../deploy/kubernetes/configmaps.json"].assert_eq(&configmaps());
    for file in ["deploy/kubernetes/forewarn.yaml", "deploy/kubernetes/configmaps.json"] {
        let out =
            Command::new("python3").args(["-m", "kubernetes_validate", "--strict", "--quiet"]).arg(repo(file)).output();
        let out = out.expect("kubernetes-validate is installed (scripts/test installs it)");
        assert!(out.status.success(), "{file}:\n{}{}", text(&out.stdout), text(&out.stderr));
    }
    let docs = yaml_documents(&repo("deploy/kubernetes/forewarn.yaml"));
    let kinds = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);
    let rules_keys: Vec<String> = serde_json::from_str::<Value>(&configmaps()).expect("JSON")["items"][1]["data"]
        .as_object()
        .expect("data")
        .keys()
        .cloned()
        .collect();
    let config = repo("deploy/kubernetes/forewarn.toml");
    let mut owned = Vec::new();
    for set in kinds("StatefulSet") {
        let name = set["metadata"]["name"].as_str().expect("a name");
        let spec = &set["spec"]["template"]["spec"];
        let volume = spec["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == "rules").expect("rules");
        let items: Vec<(String, String)> = volume["configMap"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| (i["key"].as_str().expect("key").into(), i["path"].as_str().expect("path").into()))
            .collect();
        assert_eq!(
            items.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            rules_keys,
            "{name}: one item per rules file (add the new ones to forewarn.yaml)"
        );
        assert!(items.iter().all(|(k, p)| k.replace("--", "/") == *p), "{name}: items go back to their paths");
        let container = &spec["containers"][0];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        let replicas = set["spec"]["replicas"].as_u64().expect("replicas");
        for index in 0..replicas {
            let http = format!("127.0.0.1:{}", free_port());
            let args: Vec<String> = container["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| {
                    let a = a.as_str().expect("a string").replace("$(POD_NAME)", &format!("{name}-{index}"));
                    let a = a.replace("$(POD_INDEX)", &index.to_string()).replace("0.0.0.0:9464", &http);
                    a.replace("/etc/forewarn/forewarn.toml", config.to_str().expect("utf-8"))
                        .replace("/etc/forewarn/rules", repo("rules").to_str().expect("utf-8"))
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = forewarn(&args);
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("cannot connect to NATS at nats://nats-0.nats:4222"),
                "{name}-{index} got as far as connecting:\n{args:?}\n{stderr}"
            );
            if let Some(i) = args.iter().position(|a| *a == "--partitions") {
                let slice = forewarn::partition::Owned::parse(args[i + 1], 16).expect("a slice");
                owned.extend(slice.list);
            }
        }
    }
    assert_eq!(owned, (0..16).collect::<Vec<u16>>(), "the detect pods own every partition once");
    let services: Vec<&Value> = kinds("Service").collect();
    for monitor in kinds("ServiceMonitor") {
        let wanted = monitor["spec"]["selector"]["matchExpressions"][0]["values"].as_array().expect("values");
        for component in wanted {
            let found = services.iter().any(|s| {
                s["metadata"]["labels"]["app.kubernetes.io/component"] == *component
                    && s["spec"]["ports"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "http"))
            });
            assert!(found, "a Service with component {component} and an http port");
        }
    }
    // No single dispatcher: two of one group (one --instance), a budget that keeps one.
    let dispatch = kinds("StatefulSet").find(|s| s["metadata"]["name"] == "forewarn-dispatch").expect("dispatchers");
    assert!(dispatch["spec"]["replicas"].as_u64() >= Some(2), "2 or more dispatchers");
    let args = dispatch["spec"]["template"]["spec"]["containers"][0]["args"].as_array().expect("args");
    let instance = args.iter().position(|a| a == "--instance").map(|i| &args[i + 1]);
    assert!(instance.is_some_and(|i| !i.as_str().unwrap_or("").contains("$(")), "one group name for every pod");
    let labels = &dispatch["spec"]["selector"]["matchLabels"];
    let budget = kinds("PodDisruptionBudget").find(|b| b["spec"]["selector"]["matchLabels"] == *labels);
    assert!(budget.is_some_and(|b| b["spec"]["minAvailable"].as_u64() >= Some(1)), "a budget keeping one dispatcher");
}

/// The image build: two stages, the runtime as a numeric non-root user,
/// every COPY source present, the build stage's files enough for
/// `cargo --locked`, and the default command accepted by forewarn.
#[test]
fn the_container_image_is_multi_stage_non_root_and_builds_from_what_it_copies() {
    let dockerfile = fs::read_to_string(repo("deploy/container/Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let stages = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    let runtime_stage = dockerfile.rsplit("\nFROM ").next().expect("a last stage");
    let user = runtime_stage.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER in the runtime stage");
    let uid: u32 = user.split(':').next().and_then(|u| u.parse().ok()).expect("a numeric user");
    assert_ne!(uid, 0, "not root");
    let context = tempfile::tempdir().expect("a temp dir");
    for line in lines.iter().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &words[..words.len() - 1] {
            assert!(repo(source).exists(), "COPY {source}: not in the repository");
            if !runtime_stage.contains(line) {
                let status = Command::new("cp").arg("-r").arg(repo(source)).arg(context.path()).status();
                assert!(status.is_ok_and(|s| s.success()), "copy {source}");
            }
        }
    }
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1", "--no-deps"])
        .current_dir(context.path())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "the build stage's files are a whole package:\n{}", text(&out.stderr));
    let exec: Vec<String> = ["ENTRYPOINT", "CMD"]
        .iter()
        .flat_map(|k| {
            let json = lines.iter().find_map(|l| l.strip_prefix(&format!("{k} "))).expect(k);
            serde_json::from_str::<Vec<String>>(json).expect("exec form")
        })
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/forewarn");
    let port = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = exec[1..]
        .iter()
        .map(|a| a.replace("/etc/forewarn/rules", repo("rules").to_str().expect("utf-8")))
        .map(|a| if a.ends_with(":9464") { port.clone() } else { a })
        .chain(["--nats".to_string(), format!("nats://127.0.0.1:{}", free_port())])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = text(&forewarn(&args).stderr);
    assert!(stderr.contains("cannot connect to NATS"), "the image's command starts forewarn:\n{stderr}");
}

//! The Helm chart and the Dockerfile: `helm lint` and `helm template` for the defaults and
//! each documented example, strict validation of the rendered manifests against the
//! Kubernetes schemas, the rendered container args accepted by the real binary, and the image
//! agreeing with the chart on port, user and paths.

use crate::common::*;
use crate::detection::T;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn chart() -> PathBuf {
    Path::new(ROOT).join("helm/anomaly-sidecar")
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lints and renders a chart, validates the manifests strictly, returns them.
fn render(helm: &Path, validate: &Path, chart: &Path, extra: &[&str]) -> String {
    ok(Command::new(helm).arg("lint").arg(chart).args(extra));
    let manifests = ok(Command::new(helm)
        .args(["template", "t"])
        .arg(chart)
        .args(extra));
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "manifests.yaml", &manifests);
    let out = ok(Command::new(validate).arg("--strict").arg(&file));
    assert!(!out.contains("ERROR") && !out.contains("failed"), "{out}");
    manifests
}

/// The documents of a multi-document YAML stream.
fn documents(manifests: &str) -> Vec<serde_json::Value> {
    manifests
        .split("\n---")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .map(|d| serde_saphyr::from_str::<serde_json::Value>(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

#[test]
fn chart_copies_match_the_repo_files() {
    for (copy, original) in [
        ("helm/anomaly-sidecar/files/rules.yaml", "rules.yaml"),
        (
            "helm/anomaly-sidecar/files/anomaly-alerts.yml",
            "deploy/prometheus/anomaly-alerts.yml",
        ),
    ] {
        let a = std::fs::read_to_string(Path::new(ROOT).join(copy)).unwrap();
        let b = std::fs::read_to_string(Path::new(ROOT).join(original)).unwrap();
        assert_eq!(a, b, "{copy} must be a copy of {original}");
    }
}

#[test]
fn default_and_standalone_example_render_and_validate() {
    let (Some(helm), Some(validate)) = (tool("helm"), tool("kubernetes-validate")) else {
        return;
    };
    let docs = documents(&render(&helm, &validate, &chart(), &[]));
    let deploy = kind(&docs, "Deployment").expect("a Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/-/ready");
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["emptyDir"].is_object()));
    let cm = kind(&docs, "ConfigMap").unwrap();
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("rules.yaml")).unwrap();
    assert_eq!(
        cm["data"]["rules.yaml"].as_str().unwrap().trim_end(),
        shipped.trim_end()
    );
    assert!(kind(&docs, "ServiceMonitor").is_none() && kind(&docs, "PrometheusRule").is_none());

    // With a web config: its Secret mounted whole, the flag set, probes on the TCP port, and
    // the ServiceMonitor speaking TLS with basic auth.
    let docs = documents(&render(
        &helm,
        &validate,
        &chart(),
        &[
            "--set",
            "webConfig.existingSecret=sidecar-web",
            "--set",
            "targetsFile.existingSecret=sidecar-targets",
            "--set",
            "standalone.enabled=true",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.endpoint.scheme=https",
            "--set",
            "serviceMonitor.endpoint.basicAuth.username.name=web-auth",
            "--set",
            "serviceMonitor.endpoint.basicAuth.username.key=user",
            "--set",
            "serviceMonitor.endpoint.basicAuth.password.name=web-auth",
            "--set",
            "serviceMonitor.endpoint.basicAuth.password.key=password",
        ],
    ));
    let pod = &kind(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"--web.config.file=/etc/anomaly-sidecar-web/web-config.yml"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--targets-file=/etc/anomaly-sidecar-targets/targets.yml"),
        "{args:?}"
    );
    assert!(
        c["livenessProbe"]["tcpSocket"].is_object() && c["readinessProbe"]["tcpSocket"].is_object()
    );
    let volumes = pod["volumes"].as_array().unwrap();
    for secret in ["sidecar-web", "sidecar-targets"] {
        assert!(
            volumes.iter().any(|v| v["secret"]["secretName"] == secret),
            "{secret}"
        );
    }
    let sm = kind(&docs, "ServiceMonitor").expect("ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["scheme"], "https");
    assert_eq!(
        sm["spec"]["endpoints"][0]["basicAuth"]["password"]["key"],
        "password"
    );

    let example = chart().join("examples/standalone-values.yaml");
    let docs = documents(&render(
        &helm,
        &validate,
        &chart(),
        &["-f", example.to_str().unwrap()],
    ));
    // Sharded: a StatefulSet whose replicas each get a claim of their own.
    let sts = kind(&docs, "StatefulSet").expect("a StatefulSet");
    assert!(kind(&docs, "Deployment").is_none());
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "anomaly-sidecar-data"
    );
    let pod = &sts["spec"]["template"]["spec"];
    assert!(!pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "anomaly-sidecar-data"));
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"] == "anomaly-webhook"));
    assert!(kind(&docs, "PersistentVolumeClaim").is_none());
    // The signing secret is read from where its volume is mounted, outside the ConfigMap's.
    let c = &pod["containers"][0];
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "anomaly-sidecar-secret")
        .expect("secret mount");
    let mount_path = mount["mountPath"].as_str().unwrap();
    assert!(!mount_path.starts_with("/etc/anomaly-sidecar/"));
    let arg = format!("--webhook-secret-file={mount_path}/webhook-secret");
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &serde_json::Value::String(arg.clone())),
        "{arg}"
    );
    // Webhook URLs (a chat webhook's path is its token) come from a Secret, never in args.
    let args = serde_json::to_string(&c["args"]).unwrap();
    assert!(
        !args.contains("hooks/anomalies") && !args.contains("--webhook="),
        "{args}"
    );
    let env = c["env"].as_array().expect("env");
    let hook = env
        .iter()
        .find(|e| e["name"] == "ANOMALY_SIDECAR_WEBHOOK")
        .expect("webhooks from the environment");
    let secret_name = hook["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap();
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret_name)
        .expect("the chart's webhook Secret");
    assert_eq!(
        secret["stringData"]["webhooks"],
        "http://chat-relay.tools.svc.cluster.local:8080/hooks/anomalies"
    );
    assert!(kind(&docs, "ServiceMonitor").is_some());
    // The PrometheusRule holds the repo's rules file, which promtool accepts.
    let rule = kind(&docs, "PrometheusRule").expect("PrometheusRule");
    // One alert per rules.yaml rule, its severity and annotations carried over, no `for`.
    let per_rule = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let spike = per_rule
        .iter()
        .find(|r| r["alert"] == "latency_spike")
        .expect("latency_spike alert");
    assert_eq!(spike["labels"]["severity"], "critical");
    assert!(spike["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("{{ $labels.handler }}"));
    assert!(spike.get("for").is_none());
    assert!(rule["spec"]["groups"][1]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["alert"] == "AnomalySidecarTargetDown"));
    if let Some(promtool) = tool("promtool") {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "rules.yml",
            &serde_json::to_string(&rule["spec"]).unwrap(),
        );
        ok(Command::new(promtool).args(["check", "rules"]).arg(f));
    }
}

#[test]
fn sidecar_example_renders_validates_and_its_args_run() {
    let (Some(helm), Some(validate)) = (tool("helm"), tool("kubernetes-validate")) else {
        return;
    };
    let dir = sidecar_example(&helm);
    let example = dir.path().join("helm/anomaly-sidecar/examples/sidecar");
    let docs = documents(&render(&helm, &validate, &example, &[]));
    let pod = &kind(&docs, "Deployment").unwrap()["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(
        containers.len(),
        2,
        "the service and the sidecar in one pod"
    );
    let sidecar = &containers[1];
    assert_eq!(sidecar["name"], "anomaly-sidecar");
    let args = args_of_container(sidecar);
    assert!(
        args.contains(&"--target=http://127.0.0.1:8080/metrics".to_string()),
        "{args:?}"
    );

    // The real binary accepts exactly what the chart renders (paths and port made local).
    let work = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = local_args(args, work.path(), &listen, &[]);
    let mut child = Command::new(BIN)
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait_for("rendered args run", T, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("binary refused the chart's args {args:?}: {status}");
        }
        http("GET", &listen, "/-/ready").filter(|(s, _)| *s == 200)
    });
    assert_eq!(ready.0, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn dockerfile_agrees_with_the_chart() {
    let docker = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    let values: serde_json::Value = serde_saphyr::from_str(&values).unwrap();
    let helpers = std::fs::read_to_string(chart().join("templates/_helpers.tpl")).unwrap();
    let port = values["port"].as_u64().unwrap();
    let user = values["podSecurityContext"]["runAsUser"].as_u64().unwrap();
    assert!(
        docker.lines().any(|l| l.trim() == format!("EXPOSE {port}")),
        "EXPOSE {port}"
    );
    assert!(
        docker
            .lines()
            .any(|l| l.trim() == format!("USER {user}:{user}")),
        "USER {user}"
    );
    assert!(
        docker.contains("FROM gcr.io/distroless/"),
        "distroless final stage"
    );
    assert!(docker.contains("ENTRYPOINT [\"/usr/local/bin/anomaly-sidecar\"]"));
    for path in [
        "/etc/anomaly-sidecar/rules.yaml",
        "/var/lib/anomaly-sidecar",
    ] {
        assert!(
            docker.contains(path) && helpers.contains(path),
            "{path} in both"
        );
    }
    assert!(docker.contains("COPY rules.yaml /etc/anomaly-sidecar/rules.yaml"));
}

#[test]
fn warm_start_values_set_the_flags_and_the_pod_name() {
    let (Some(helm), Some(validate)) = (tool("helm"), tool("kubernetes-validate")) else {
        return;
    };
    let from = "warmup.from=http://prometheus-operated.monitoring.svc:9090";
    let flag = "--warmup-from=http://prometheus-operated.monitoring.svc:9090";
    // In a service's pod: this pod's copy of its neighbour's series, by its own name.
    let example = sidecar_example(&helm);
    let docs = documents(&render(
        &helm,
        &validate,
        &example.path().join("helm/anomaly-sidecar/examples/sidecar"),
        &["--set", &format!("anomaly-sidecar.{from}")],
    ));
    let c = &kind(&docs, "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][1];
    let args = args_of_container(c);
    assert!(args.iter().any(|a| a == flag), "{args:?}");
    assert!(
        args.iter()
            .any(|a| a == "--warmup-selector=pod=\"$(POD_NAME)\""),
        "{args:?}"
    );
    assert_eq!(c["env"][0]["name"], "POD_NAME");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // Standalone, the sidecar's own pod name would match nothing it scrapes: no selector,
    // each discovered pod's namespace and pod pin its queries.
    let docs = documents(&render(&helm, &validate, &chart(), &["--set", from]));
    let c = &kind(&docs, "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0];
    let args = args_of_container(c);
    assert!(args.iter().any(|a| a == flag), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--warmup-selector")),
        "{args:?}"
    );
    assert!(c["env"].is_null(), "{c}");
    // Off by default: no flag, no env.
    let docs = documents(&render(&helm, &validate, &chart(), &[]));
    let c = &kind(&docs, "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0];
    assert!(!args_of_container(c)
        .iter()
        .any(|a| a.starts_with("--warmup")));
    assert!(c["env"].is_null());
}

/// The chart's args with its in-pod paths made local: this repo's rules, a data dir under
/// `work`, `listen`, and `files` (in-pod path → local file).
fn local_args(
    args: Vec<String>,
    work: &Path,
    listen: &str,
    files: &[(&str, &Path)],
) -> Vec<String> {
    let rules = Path::new(ROOT).join("rules.yaml");
    let data = work.join("data");
    let mut paths = vec![
        ("/etc/anomaly-sidecar/rules.yaml", rules.as_path()),
        ("/var/lib/anomaly-sidecar", data.as_path()),
    ];
    paths.extend_from_slice(files);
    args.into_iter()
        .map(|a| {
            let a = paths
                .iter()
                .fold(a, |a, (from, to)| a.replace(from, to.to_str().unwrap()));
            a.replace("0.0.0.0:9477", listen)
        })
        .collect()
}

/// The container args a manifest's first pod template renders.
fn args_of(pod: &serde_json::Value) -> Vec<String> {
    args_of_container(&pod["containers"][0])
}

fn args_of_container(c: &serde_json::Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// A copy of the repo's charts with the sidecar example's dependency built (`helm
/// dependency build` writes charts/ next to the example): the example is under
/// `helm/anomaly-sidecar/examples/sidecar` in it.
fn sidecar_example(helm: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(Command::new("cp")
        .arg("-r")
        .arg(Path::new(ROOT).join("helm"))
        .arg(dir.path()));
    ok(Command::new(helm)
        .args(["dependency", "build"])
        .arg(dir.path().join("helm/anomaly-sidecar/examples/sidecar")));
    dir
}

#[test]
fn discovery_renders_rbac_that_validates_and_the_binary_runs_its_args() {
    let (Some(helm), Some(validate)) = (tool("helm"), tool("kubernetes-validate")) else {
        return;
    };
    let example = chart().join("examples/standalone-values.yaml");
    // The example with `--set` values on top.
    let example_with = |set: &[&str]| {
        let mut args = vec!["-f", example.to_str().unwrap()];
        for s in set {
            args.extend(["--set", s]);
        }
        documents(&render(&helm, &validate, &chart(), &args))
    };
    let docs = example_with(&[]);
    // A ServiceAccount, and in each watched namespace only get/list/watch on pods.
    let sa = kind(&docs, "ServiceAccount").expect("ServiceAccount");
    let sa_name = sa["metadata"]["name"].as_str().unwrap();
    let sts = kind(&docs, "StatefulSet").unwrap();
    let sts_name = sts["metadata"]["name"].as_str().unwrap();
    let named = |kind: &str, suffix: &str| -> Vec<&serde_json::Value> {
        docs.iter()
            .filter(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(suffix))
            })
            .collect()
    };
    let roles = named("Role", "-discovery");
    let namespaces: Vec<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["monitoring", "shop"]);
    for r in &roles {
        assert_eq!(
            r["rules"],
            serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
        );
    }
    let bindings = named("RoleBinding", "-discovery");
    assert_eq!(bindings.len(), 2);
    assert!(bindings.iter().all(|b| b["subjects"][0]["name"] == sa_name));
    assert!(kind(&docs, "ClusterRole").is_none());
    // --shard auto reads its own StatefulSet, and only that.
    let shards = named("Role", "-shards");
    assert_eq!(shards.len(), 1);
    assert_eq!(
        shards[0]["rules"],
        serde_json::json!([{"apiGroups": ["apps"], "resources": ["statefulsets"],
            "resourceNames": [sts_name], "verbs": ["get", "list", "watch"]}])
    );
    assert_eq!(
        named("RoleBinding", "-shards")[0]["subjects"][0]["name"],
        sa_name
    );
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], sa_name);
    assert_eq!(pod["automountServiceAccountToken"], true);
    let args = args_of(pod);
    assert!(args.contains(&"--shard=auto".to_string()), "{args:?}");
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "POD_NAMESPACE"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "{env:?}"
    );
    // Without RBAC, N is fixed in the args.
    let fixed = example_with(&["rbac.create=false"]);
    let fixed_pod = &kind(&fixed, "StatefulSet").unwrap()["spec"]["template"]["spec"];
    assert!(args_of(fixed_pod).contains(&"--shard=auto/2".to_string()));
    assert!(fixed.iter().all(|d| d["kind"] != "Role"));
    let targets_cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["targets.yml"].is_string())
        .expect("the discovery ConfigMap");

    // Cluster-wide: one ClusterRole and its binding instead.
    let wide = example_with(&["rbac.clusterWide=true"]);
    // (The StatefulSet's Role stays: one object in the release's namespace.)
    let wide_roles: Vec<&serde_json::Value> = wide.iter().filter(|d| d["kind"] == "Role").collect();
    assert_eq!(wide_roles.len(), 1);
    assert_eq!(wide_roles[0]["rules"][0]["resources"][0], "statefulsets");
    assert_eq!(
        kind(&wide, "ClusterRole").unwrap()["rules"][0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    assert!(kind(&wide, "ClusterRoleBinding").is_some());
    // Each namespace's Role grants what the entries watching it read, not what others do.
    let mixed = example_with(&["discovery[0].kubernetes_sd.role=endpointslice"]);
    let rules_in = |ns: &str| {
        mixed
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns)
            .map(|r| r["rules"].clone())
            .unwrap()
    };
    assert_eq!(rules_in("shop").as_array().unwrap().len(), 2);
    assert_eq!(rules_in("shop")[1]["resources"][0], "endpointslices");
    assert_eq!(
        rules_in("monitoring"),
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
    );
    // The Service role reads EndpointSlices too (and pods, for their workload).
    let slices = documents(&render(
        &helm,
        &validate,
        &chart(),
        &[
            "--set",
            "discovery[0].kubernetes_sd.role=endpointslice",
            "--set",
            "discovery[0].kubernetes_sd.port=metrics",
        ],
    ));
    assert_eq!(
        kind(&slices, "Role").unwrap()["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
        ])
    );

    // The binary runs with exactly those args, its targets file the rendered one, talking to
    // an API served by the test through $KUBECONFIG (as outside a cluster), as replica 1.
    let work = tempfile::tempdir().unwrap();
    let api = crate::kubernetes::FakeApi::start();
    api.put(crate::kubernetes::statefulset(sts_name, 2));
    let kubeconfig = api.kubeconfig(work.path());
    let targets = write(
        work.path(),
        "targets.yml",
        targets_cm["data"]["targets.yml"].as_str().unwrap(),
    );
    let secret = write(work.path(), "webhook-secret", "s3cret");
    let listen = format!("127.0.0.1:{}", free_port());
    let files = [
        (
            "/etc/anomaly-sidecar-targets/targets.yml",
            targets.as_path(),
        ),
        (
            "/var/run/secrets/anomaly-sidecar/webhook-secret",
            secret.as_path(),
        ),
    ];
    let args = local_args(args, work.path(), &listen, &files);
    let mut child = Command::new(BIN)
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", format!("{sts_name}-1"))
        .env("POD_NAMESPACE", "shop")
        .env("ANOMALY_SIDECAR_WEBHOOK", "http://127.0.0.1:9/hook")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("rendered args run", T, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("binary refused the chart's args {args:?}: {status}");
        }
        http("GET", &listen, "/-/ready").filter(|(s, _)| *s == 200)
    });
    // Both entries list their namespace's pods with their selector.
    wait_for("both namespaces listed", T, || {
        let r = api.requests();
        (r.iter()
            .any(|q| q.contains("/namespaces/shop/pods") && q.contains("app%3Dapi"))
            && r.iter().any(|q| q.contains("/namespaces/monitoring/pods"))
            && r.iter().any(|q| {
                q.contains("/namespaces/shop/statefulsets")
                    && q.contains("watch=true")
                    && q.contains(&format!("metadata.name%3D{sts_name}"))
            }))
        .then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
}

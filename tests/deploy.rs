//! The files in `deploy/` run as written. Each test reads a deploy file the way its runtime
//! does (the Dockerfile's final stage, the Kubernetes manifest and the compose file as YAML,
//! the systemd unit's keys), builds the exact command line and environment the container or
//! service would get, maps the container's paths into a temporary directory, and runs the
//! built `timgate` with them, up to `/readyz` and a request where one can be made. The only
//! liberty taken is the network: every listener is moved to 127.0.0.1 port 0 by the
//! `TIMGATE__…_LISTEN` variables, as a container's own network namespace would isolate it,
//! and compose's service name `emulator` is given as the address the emulator bound.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper::StatusCode;
use serde_norway::Value;
use support::{Caller, Launched};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DOCKERFILE: &str = include_str!("../deploy/Dockerfile");
const MANIFEST: &str = include_str!("../deploy/kubernetes/timgate-sidecar.yaml");
const COMPOSE: &str = include_str!("../deploy/docker-compose.yml");
const UNIT: &str = include_str!("../deploy/systemd/timgate.service");

/// The Dockerfile with its continued lines joined, as Docker reads each instruction.
fn dockerfile_lines() -> String {
    DOCKERFILE.replace("\\\n", " ")
}

/// The final stage of the Dockerfile, as a container runtime sees it.
#[derive(Debug, Default)]
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    user: String,
    /// Files copied from the build context: (path in the image, path in the repository).
    files: Vec<(String, PathBuf)>,
    /// Where the binary built in the first stage lands.
    binary: String,
}

/// Parses the instructions the final stage uses; exec (JSON array) forms only, as a shell
/// form would need a shell the distroless image lacks.
fn image() -> Image {
    let joined = dockerfile_lines();
    let mut image = Image::default();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let array = || -> Vec<String> {
            serde_json::from_str(rest)
                .unwrap_or_else(|e| panic!("{instruction} must be a JSON array ({e}): {rest}"))
        };
        match instruction {
            "FROM" => image = Image::default(),
            "ENTRYPOINT" => image.entrypoint = array(),
            "CMD" => image.cmd = array(),
            "USER" => image.user = rest.to_owned(),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV key=value");
                    image.env.push((k.to_owned(), v.to_owned()));
                }
            }
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let (to, from) = (parts[parts.len() - 1], parts[parts.len() - 2]);
                if parts[0].starts_with("--from=") {
                    assert!(from.ends_with("/target/dist/timgate"), "{line}");
                    image.binary = to.to_owned();
                } else {
                    image
                        .files
                        .push((to.to_owned(), Path::new(ROOT).join(from)));
                }
            }
            _ => {}
        }
    }
    image
}

/// One container or service: the command line and environment it gets, and its files.
struct Container {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// (absolute path inside the container, contents).
    files: Vec<(String, String)>,
}

impl Container {
    /// The image as it starts: its files, its ENV; `args` replace CMD when given.
    fn of(image: &Image, args: Option<Vec<String>>) -> Container {
        let mut argv = image.entrypoint.clone();
        argv.extend(args.unwrap_or_else(|| image.cmd.clone()));
        Container {
            argv,
            env: image.env.clone(),
            files: image
                .files
                .iter()
                .map(|(to, from)| (to.clone(), std::fs::read_to_string(from).unwrap()))
                .collect(),
        }
    }

    /// A file mounted over the image's (a volume).
    fn mount(&mut self, path: &str, contents: String) {
        self.files.retain(|(p, _)| p != path);
        self.files.push((path.to_owned(), contents));
    }

    /// The command, with the container's root at `root`: the image's binary is the built
    /// one, and every absolute path in an argument, a variable or a file is under `root`.
    fn command(&self, image: &Image, root: &Path) -> tokio::process::Command {
        let map = |s: &str| match s.strip_prefix('/') {
            Some(inside) if !inside.is_empty() => root.join(inside).display().to_string(),
            _ => s.to_owned(),
        };
        for (path, contents) in &self.files {
            let on_disk = PathBuf::from(map(path));
            std::fs::create_dir_all(on_disk.parent().unwrap()).unwrap();
            let contents = contents.replace("\"/run/", &format!("\"{}/run/", root.display()));
            std::fs::write(on_disk, contents).unwrap();
        }
        assert_eq!(
            self.argv[0], image.binary,
            "the entrypoint runs the built binary"
        );
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_timgate"));
        command.args(self.argv[1..].iter().map(|a| map(a)));
        command.env_clear();
        for (k, v) in &self.env {
            command.env(k, map(v));
        }
        command
    }
}

/// The container's network, in this test: every listener on loopback port 0, JSON logs so
/// the test can read where they went.
fn isolated(mut command: tokio::process::Command) -> tokio::process::Command {
    for key in ["SERVER__LISTEN", "SERVER__ADMIN_LISTEN", "EMULATOR__LISTEN"] {
        command.env(format!("TIMGATE__{key}"), "127.0.0.1:0");
    }
    command.env("TIMGATE__LOG__FORMAT", "json");
    command
}

/// A fresh directory standing for a container's root filesystem.
fn root(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "timgate-deploy-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `/readyz` and `/healthz` answer 200 on the admin port.
async fn probes_pass(admin: std::net::SocketAddr) {
    let caller = Caller::default();
    for path in ["/readyz", "/healthz"] {
        assert_eq!(
            caller.get(admin, path).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
}

fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn strings(value: &Value) -> Option<Vec<String>> {
    value.as_sequence().map(|items| {
        items
            .iter()
            .map(|i| i.as_str().expect("a string").to_owned())
            .collect()
    })
}

/// The build stage's stand-in step (`for b in ...; done`) run as written, in a directory
/// holding only Cargo.toml: it must give every `[[bench]]` a file, or Cargo refuses the
/// manifest and the image does not build (it once listed four of the six benches by hand).
#[test]
fn the_build_stage_gives_every_bench_of_the_manifest_a_stand_in() {
    let joined = dockerfile_lines();
    let step = joined
        .split("&&")
        .map(str::trim)
        .find(|part| part.starts_with("for b in"))
        .expect("the Dockerfile's stand-in loop over the benches");
    let dir = root("benches");
    std::fs::copy(Path::new(ROOT).join("Cargo.toml"), dir.join("Cargo.toml")).unwrap();
    std::fs::create_dir(dir.join("benches")).unwrap();
    let ran = std::process::Command::new("sh")
        .args(["-c", step])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(ran.success(), "{step}");
    let manifest: toml::Table = include_str!("../Cargo.toml").parse().unwrap();
    let benches = manifest["bench"].as_array().expect("[[bench]] targets");
    assert!(!benches.is_empty());
    for bench in benches {
        let name = bench["name"].as_str().unwrap();
        assert!(
            dir.join("benches").join(format!("{name}.rs")).is_file(),
            "no stand-in for bench {name}: {step}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Both of the build stage's `cargo build`s (the cached dependencies, then timgate) use the
/// profile whose binary the build strips and the final stage copies (`image` checks the
/// COPY): a profile changed in one place only would fail the image's build.
#[test]
fn the_build_stage_builds_and_strips_the_binary_the_image_copies() {
    let joined = dockerfile_lines();
    let builds: Vec<&str> = joined
        .split("&&")
        .flat_map(|part| part.split("RUN "))
        .map(str::trim)
        .filter(|part| part.starts_with("cargo build"))
        .collect();
    assert_eq!(builds.len(), 2, "{builds:?}");
    for build in builds {
        assert!(build.contains("--profile dist"), "{build}");
    }
    assert!(joined.contains("strip target/dist/timgate"));
    assert!(image().binary.ends_with("/timgate"));
}

#[test]
fn the_image_runs_as_a_numeric_non_root_user_with_the_binary_as_entrypoint() {
    let image = image();
    let (uid, gid) = image.user.split_once(':').expect("USER uid:gid");
    let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
    assert!(uid > 0 && gid > 0, "{}", image.user);
    assert_eq!(image.entrypoint, std::slice::from_ref(&image.binary));
    assert_eq!(image.cmd, ["run"]);
}

/// `docker run -p 127.0.0.1:8080:8080 timgate`: the image's own configuration listens where
/// a published port reaches it, and the demo answers.
#[tokio::test]
async fn the_image_alone_listens_on_all_interfaces_and_serves_the_demo() {
    let image = image();
    let root = root("image");
    // `docker run timgate check`: the argument replaces CMD.
    let checked = Container::of(&image, Some(vec!["check".into()]))
        .command(&image, &root)
        .output()
        .await
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let printed = String::from_utf8(checked.stdout).unwrap();
    let effective = timgate::config::Config::from_toml(&printed).unwrap();
    assert_eq!(effective.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(effective.server.admin_listen.to_string(), "0.0.0.0:9464");

    let container = Container::of(&image, None);
    let gateway = Launched::start(isolated(container.command(&image, &root)))
        .await
        .unwrap();
    probes_pass(gateway.admin.unwrap()).await;
    let answer = Caller::default()
        .post(
            gateway.addr,
            "/v4/live_engine_http_srv/get_room_info",
            r#"{"RoomId":"r"}"#,
        )
        .await;
    assert_eq!(answer.code(), 0, "{:?}", answer.json());
    assert_eq!(gateway.stop().await, Some(0));
    std::fs::remove_dir_all(root).unwrap();
}

/// The Kubernetes sidecar, as the kubelet starts it: ENTRYPOINT plus the container's `args`,
/// the image's ENV plus the container's (the Secret's key), the ConfigMap mounted.
#[tokio::test]
async fn the_kubernetes_sidecar_starts_and_passes_its_probes() {
    let docs = yaml_documents(MANIFEST);
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap();
    let configmap = kind("ConfigMap");
    let secret = |name: &Value| {
        docs.iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == *name)
            .unwrap()
    };
    let pod = &kind("Deployment")["spec"]["template"]["spec"];
    let sidecar = pod["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "timgate")
        .unwrap();
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert!(
        sidecar["command"].is_null(),
        "command would replace the ENTRYPOINT"
    );

    let image = image();
    let security = &sidecar["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    let uid = image.user.split(':').next().unwrap();
    assert_eq!(security["runAsUser"].as_u64().unwrap().to_string(), uid);

    let mut container = Container::of(&image, strings(&sidecar["args"]));
    for var in sidecar["env"].as_sequence().unwrap() {
        let reference = &var["valueFrom"]["secretKeyRef"];
        let value = match reference["key"].as_str() {
            Some(key) => secret(&reference["name"])["stringData"][key]
                .as_str()
                .unwrap(),
            None => var["value"].as_str().unwrap(),
        };
        container
            .env
            .push((var["name"].as_str().unwrap().to_owned(), value.to_owned()));
    }
    for mount in sidecar["volumeMounts"].as_sequence().unwrap() {
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
        let dir = mount["mountPath"].as_str().unwrap();
        for (file, contents) in configmap["data"].as_mapping().unwrap() {
            let (file, contents) = (file.as_str().unwrap(), contents.as_str().unwrap());
            container.mount(&format!("{dir}/{file}"), contents.to_owned());
        }
    }

    // The probes' port is the admin listener's, on the pod IP.
    let admin_port = sidecar["ports"][0]["containerPort"].as_u64().unwrap();
    for probe in ["startupProbe", "readinessProbe"] {
        assert_eq!(sidecar[probe]["httpGet"]["path"], "/readyz");
    }
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    let root = root("kubernetes");
    let mut check = container.command(&image, &root);
    check.arg("check");
    let checked = check.output().await.unwrap();
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        printed.contains(&format!("admin_listen = \"0.0.0.0:{admin_port}\"")),
        "{printed}"
    );
    assert!(printed.contains("listen = \"127.0.0.1:8080\""), "{printed}");

    let gateway = Launched::start(isolated(container.command(&image, &root)))
        .await
        .unwrap_or_else(|e| panic!("the sidecar did not start: {e:?}"));
    probes_pass(gateway.admin.unwrap()).await;
    assert_eq!(gateway.stop().await, Some(0));
    std::fs::remove_dir_all(root).unwrap();
}

/// `docker compose up`: the emulator service, then timgate in front of it, both from the
/// Dockerfile's image with their `command` and the mounted configuration; a request signed
/// by one is accepted by the other.
#[tokio::test]
async fn the_compose_services_start_and_answer_through_each_other() {
    let compose: Value = serde_norway::from_str(COMPOSE).unwrap();
    let services = &compose["services"];
    let image = image();
    assert_eq!(
        services["emulator"]["build"]["dockerfile"],
        "deploy/Dockerfile"
    );
    assert_eq!(
        services["timgate"]["image"], services["emulator"]["image"],
        "both services run the image the emulator service builds"
    );
    let container = |name: &str| {
        let service = &services[name];
        let mut container = Container::of(&image, strings(&service["command"]));
        if let Some(env) = service["environment"].as_mapping() {
            for (k, v) in env {
                let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap());
                container.env.push((k.to_owned(), v.to_owned()));
            }
        }
        for volume in strings(&service["volumes"]).unwrap() {
            let parts: Vec<&str> = volume.split(':').collect();
            let source = Path::new(ROOT).join("deploy").join(parts[0]);
            container.mount(parts[1], std::fs::read_to_string(source).unwrap());
        }
        // Published ports are on the host's loopback only.
        for port in strings(&service["ports"]).unwrap() {
            assert!(port.starts_with("127.0.0.1:"), "{name}: {port}");
        }
        container
    };
    let root = root("compose");
    let emulator = Launched::start(isolated(container("emulator").command(&image, &root)))
        .await
        .unwrap_or_else(|e| panic!("the emulator service did not start: {e:?}"));
    let mut gateway = isolated(container("timgate").command(&image, &root));
    // Compose's DNS: the service name `emulator` is where the emulator listens.
    gateway.env(
        "TIMGATE__APPS__0__ENDPOINT",
        format!("http://{}", emulator.addr),
    );
    let gateway = Launched::start(gateway)
        .await
        .unwrap_or_else(|e| panic!("the timgate service did not start: {e:?}"));
    probes_pass(gateway.admin.unwrap()).await;
    let answer = Caller::default()
        .post(
            gateway.addr,
            "/v4/live_engine_http_srv/get_room_info",
            r#"{"RoomId":"r"}"#,
        )
        .await;
    assert_eq!(answer.code(), 0, "{:?}", answer.json());
    assert_eq!(gateway.stop().await, Some(0));
    assert_eq!(emulator.stop().await, Some(0));
    std::fs::remove_dir_all(root).unwrap();
}

/// The unit's `[Service]` keys (a key given twice keeps both values).
fn unit() -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut keys: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for line in UNIT.lines().map(str::trim) {
        if let Some((k, v)) = line.split_once('=')
            && !line.starts_with('#')
        {
            keys.entry(k).or_default().push(v);
        }
    }
    keys
}

/// systemd: the credential lands where the example configuration reads it, ExecStartPre
/// passes, ExecStart serves, and a bad configuration exits with the status that stops
/// restarts.
#[tokio::test]
async fn the_systemd_unit_checks_then_serves_with_its_credential() {
    let keys = unit();
    let one = |k: &str| keys[k][0];
    let image = Image {
        binary: "/usr/local/bin/timgate".into(),
        ..Image::default()
    };
    let root = root("systemd");
    let (name, source) = one("LoadCredential").split_once(':').unwrap();
    let credential = format!("/run/credentials/timgate.service/{name}");
    let config =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/systemd/timgate.toml")).unwrap();
    assert!(config.contains(&format!("secret_key_file = \"{credential}\"")));
    let service = |line: &str| Container {
        argv: line.split_whitespace().map(str::to_owned).collect(),
        env: Vec::new(),
        files: vec![
            (source.to_owned(), "the-secret-key".to_owned()),
            (credential.clone(), "the-secret-key".to_owned()),
            ("/etc/timgate/timgate.toml".to_owned(), config.clone()),
        ],
    };
    let checked = service(one("ExecStartPre"))
        .command(&image, &root)
        .output()
        .await
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(!printed.contains("the-secret-key"), "{printed}");

    let gateway = Launched::start(isolated(service(one("ExecStart")).command(&image, &root)))
        .await
        .unwrap_or_else(|e| panic!("ExecStart did not start: {e:?}"));
    probes_pass(gateway.admin.unwrap()).await;
    assert_eq!(gateway.stop().await, Some(0));

    // A configuration error's exit status is one that RestartPreventExitStatus names.
    let mut broken = service(one("ExecStartPre"));
    broken.files[2].1 = config.replace("region = \"singapore\"", "region = \"mars\"");
    let refused = broken.command(&image, &root).output().await.unwrap();
    let code = refused.status.code().unwrap().to_string();
    assert!(
        one("RestartPreventExitStatus")
            .split_whitespace()
            .any(|s| s == code)
    );
    std::fs::remove_dir_all(root).unwrap();
}

//! Hostile programs against the HumanEval sandbox: each tries one way out — writing
//! by every module that can write, starting processes by every route, reaching the
//! network, signalling other processes, reading host files, exhausting resources —
//! and each must be contained: the program does not pass, and nothing on the host
//! changes. Several go around the in-process audit hook on purpose (sqlite3,
//! `_posixsubprocess`, threads), and the whole suite runs again with the hook off, so
//! the kernel's layers (namespaces, minimal read-only root, no new processes) are
//! shown to hold by themselves.

use std::path::Path;

use super::sandbox::{Sandbox, Status};

fn sandbox() -> Sandbox {
    Sandbox::for_tests(5)
}

/// Every entry under `dir`, for "nothing appeared or changed there".
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn hostile_programs_are_contained() {
    contained(&sandbox());
}

#[test]
fn the_kernels_layers_hold_without_the_audit_hook() {
    contained(&sandbox().without_audit_hook());
}

fn contained(s: &Sandbox) {
    assert!(s.layers().contains("minimal-root"), "{}", s.layers());
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret.txt"), "host secret").unwrap();
    let h = host.path().display().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = std::process::id();
    let before = snapshot(host.path());
    let shm_before = snapshot(Path::new("/dev/shm"));
    let attacks: Vec<(&str, String)> = vec![
        // Writes outside the folder, by every module that can write.
        ("sqlite3", format!("import sqlite3\nsqlite3.connect('{h}/x.db').execute('create table t(a)')\n")),
        ("open", format!("open('{h}/x.txt', 'w').write('x')\n")),
        ("os.open", format!("import os\nos.write(os.open('{h}/x.txt', os.O_CREAT | os.O_WRONLY), b'x')\n")),
        ("io.FileIO", format!("import io\nio.FileIO('{h}/x.txt', 'w').write(b'x')\n")),
        ("pathlib", format!("import pathlib\npathlib.Path('{h}/x.txt').write_text('x')\n")),
        ("shutil.copy", format!("import shutil\nshutil.copy('program.py', '{h}/x.txt')\n")),
        ("zipfile", format!("import zipfile\nzipfile.ZipFile('{h}/x.zip', 'w').writestr('a', 'b')\n")),
        ("logging", format!("import logging\nlogging.FileHandler('{h}/x.log').emit(logging.makeLogRecord({{'msg': 'x'}}))\n")),
        ("delete", format!("import os\nos.remove('{h}/secret.txt')\n")),
        ("symlink out", "import os\nos.symlink('/usr/bin', 'u')\nopen('u/x', 'w').write('x')\n".into()),
        ("chmod /usr", "import os\nos.chmod('/usr/bin/python3', 0o777)\n".into()),
        ("/dev/shm", "open('/dev/shm/lsp-escape', 'w').write('x')\nimport os\nassert 'lsp-escape' in os.listdir('/dev/shm')\nraise SystemExit(1)\n".into()),
        // New processes, by every route.
        ("os.system", format!("import os\nassert os.system('touch {h}/p1') == 0\n")),
        ("subprocess", format!("import subprocess\nsubprocess.run(['touch', '{h}/p2'], check=True)\n")),
        ("_posixsubprocess", format!(
            "import _posixsubprocess, os\n\
             r, w = os.pipe()\n\
             _posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'touch {h}/p3'], [b'/bin/sh'], True, (), None, None, \
             -1, -1, -1, -1, -1, -1, r, w, True, False, 0, None, None, None, -1, None, False)\n"
        )),
        ("posix.fork", "import posix\nif posix.fork() == 0:\n    posix._exit(0)\n".into()),
        ("posix_spawn", "import os\nos.posix_spawn('/bin/true', ['true'], {})\n".into()),
        ("multiprocessing", "import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\np.join()\n".into()),
        ("thread", "import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\n".into()),
        ("pty", "import pty\npty.fork()\n".into()),
        // Network and signals.
        ("network", format!("import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n")),
        ("signal host", format!("import os\nos.kill({me}, 0)\n")),
        ("signal all", "import os\nos.kill(-1, 9)\n".into()),
        // Reading the host.
        ("read host file", format!("print(open('{h}/secret.txt').read())\n")),
        ("read /etc/passwd", "print(open('/etc/passwd').read())\n".into()),
        ("host pids", "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\nraise SystemExit(0 if len(pids) > 5 else 1)\n".into()),
        // Exhaustion.
        ("fill /tmp", "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))\n".into()),
        ("open files", "fs = [open('program.py') for _ in range(100000)]\n".into()),
    ];
    assert!(attacks.len() >= 20);
    for (name, program) in &attacks {
        let out = s.run(program).unwrap();
        assert_ne!(out.status, Status::Passed, "{name} was not contained");
        assert_eq!(
            snapshot(host.path()),
            before,
            "{name} changed the host folder"
        );
    }
    assert_eq!(
        snapshot(Path::new("/dev/shm")),
        shm_before,
        "/dev/shm changed"
    );
    assert!(
        listener.accept().is_err(),
        "the network attack reached the host"
    );
    // The sandbox's own folder and private /tmp still work for honest code.
    let honest = s
        .run("import tempfile\nwith tempfile.TemporaryFile() as f:\n    f.write(b'x')\nopen('own.txt', 'w').write('x')\n")
        .unwrap();
    assert_eq!(honest.status, Status::Passed, "{}", honest.stderr);
}

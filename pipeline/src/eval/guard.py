# The in-process layer of the HumanEval sandbox, run before the untrusted program:
# an audit hook (PEP 578; it cannot be removed once added) that refuses, outside the
# sandbox's own folder, every write, deletion, rename or permission change, and refuses
# everywhere new processes, signals, sockets and native code loading. The operating
# system layers (resource limits, no network, an unprivileged user) sit below it.
import os
import sys

ROOT = os.path.realpath(os.getcwd())
FORBIDDEN = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.Popen", "pty.spawn",
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "sys.setprofile", "sys.settrace", "os.chdir", "os.chroot", "resource.setrlimit",
    "webbrowser.open", "urllib.Request", "ftplib.connect", "http.client.connect",
    "smtplib.connect", "os.putenv", "os.unsetenv",
}
PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.replace": (0, 1),
    "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1),
    "os.symlink": (0, 1), "os.mkdir": (0,), "shutil.rmtree": (0,), "shutil.move": (0, 1),
    "shutil.copyfile": (1,), "shutil.copytree": (1,), "os.utime": (0,), "os.mkfifo": (0,),
    "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor
    try:
        real = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return real == ROOT or real.startswith(ROOT + os.sep)


def refuse(event, detail=""):
    raise PermissionError(f"sandbox: {event} {detail}".strip())


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or bool(flags & WRITE_FLAGS)
        if writes and path is not None and not inside(path):
            refuse("write", repr(path))
    elif event in PATH_EVENTS:
        for i in PATH_EVENTS[event]:
            if i < len(args) and args[i] is not None and not inside(args[i]):
                refuse(event, repr(args[i]))
    elif event in FORBIDDEN:
        refuse(event)


sys.addaudithook(hook)
del hook
with open("program.py", encoding="utf-8") as f:
    source = f.read()
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})

"""Run a command under the restrictions of a systemd unit, without systemd.

systemd is not PID 1 on the machines that run the tests, so a unit cannot be started. What
systemd does to a service is made of kernel features, though, and root can apply them itself,
in the order systemd applies them (src/core/execute.c, exec_child()):

``outer`` (root, started by ``unshare --mount --uts --pid --fork --mount-proc`` for
PrivateMounts, ProtectHostname and the private /proc):
  * PrivateTmp / ProtectHome: a fresh tmpfs on /tmp, /var/tmp, /home, /root, /run/user; the
    paths the run needs (the interpreter, the virtualenv, the package, the test's files) are
    bound back at the same place, as /usr and /opt would simply be there in production;
  * PrivateDevices: a /dev with only null, zero, full, random, urandom, tty, pts, shm;
  * ProtectProc=invisible, ProcSubset=pid: /proc remounted with hidepid=invisible,subset=pid;
  * StateDirectory: the state directory bound onto itself, writable;
  * ProtectSystem=strict (and ProtectKernelTunables, ProtectControlGroups): every other mount
    remounted read-only;
  * PrivateUsers: a user namespace mapping root and the uid to themselves;
  * CapabilityBoundingSet=, DynamicUser, NoNewPrivileges: inside it, every capability dropped
    from the bounding set, supplementary groups cleared, uid/gid set to an unused id in
    systemd's dynamic range, no_new_privs.

``inner`` (the unprivileged uid): the working directory /, UMask, then the seccomp filters
systemd loads — SystemCallFilter (allow-list, SystemCallErrorNumber for the rest),
RestrictAddressFamilies, MemoryDenyWriteExecute (plus the kernel's PR_SET_MDWE where it
exists) and RestrictNamespaces — each a filter of its own, as systemd installs them; then
``execve`` of the command, so the whole command runs under them, as a service does.

Not applied, because nothing here could notice: LockPersonality (nothing calls personality()),
RestrictRealtime (sched_setscheduler() is already refused whole by ~@resources),
RestrictSUIDSGID and RemoveIPC (the daemon creates neither), KeyringMode, IPAddress*.

The spec (a JSON file) is computed from the unit by tests/service/test_units.py. Any step that
fails stops the run with exit 125: a check that silently ran unrestricted would prove nothing.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

HIDDEN_TMP = ("/tmp", "/var/tmp")
HIDDEN_HOME = ("/home", "/root", "/run/user")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 32, 1024, 2048, 4096, 8192, 16384
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
_KEPT_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_MDWE = 23, 24, 38, 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
CLONE_NEWUSER = 0x10000000

_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(Exception):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise HarnessError(f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")
    return result


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = [None if v is None else v.encode() for v in (source, target, fstype)]
    _check(
        _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), data.encode() or None),
        f"mount {source} on {target} ({flags:#x} {data})",
    )


def prctl(option: int, arg: int = 0) -> int:
    return int(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0))


def _mounts() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount, from /proc/self/mountinfo."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        found.append((point, set(fields[5].split(","))))
    return found


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


# -- outer: namespaces, mounts, identity ------------------------------------------------------


def outer(spec: dict[str, Any]) -> None:
    os.umask(0o022)
    keep = sorted({os.path.realpath(p) for p in spec["keep"]}, key=len)
    keep = [k for i, k in enumerate(keep) if not any(_under(k, o) for o in keep[:i])]
    hidden = [
        *(HIDDEN_TMP if spec["private_tmp"] else ()),
        *(HIDDEN_HOME if spec["protect_home"] else ()),
    ]
    hidden = [h for h in hidden if os.path.isdir(h) and os.path.realpath(h) == h]
    held = {
        k: os.open(k, os.O_PATH | os.O_DIRECTORY) for k in keep if any(_under(k, h) for h in hidden)
    }
    for area in hidden:
        mode = "1777" if area in HIDDEN_TMP else "0755"
        mount("tmpfs", area, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    for path, fd in held.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    for path in spec["writable"]:
        mount(path, path, None, MS_BIND)
    if spec["private_devices"]:
        _private_dev()
    if spec["proc_options"]:
        mount(
            "proc",
            "/proc",
            "proc",
            MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            spec["proc_options"],
        )
    if spec["protect_system_strict"]:
        writable = [*spec["writable"], *(HIDDEN_TMP if spec["private_tmp"] else ())]
        for point, options in _mounts():
            if _under(point, "/proc") or _under(point, "/dev") or point in writable:
                continue
            kept = sum(flag for name, flag in _KEPT_FLAGS.items() if name in options)
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
    uid = spec["uid"]
    if spec["private_users"]:
        _enter_private_users(uid)
    if spec["drop_capabilities"]:
        cap = 0
        while prctl(PR_CAPBSET_READ, cap) >= 0:
            _check(prctl(PR_CAPBSET_DROP, cap), f"drop capability {cap}")
            cap += 1
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if spec["no_new_privileges"]:
        _check(prctl(PR_SET_NO_NEW_PRIVS, 1), "no_new_privs")
    os.execv(
        sys.executable, [sys.executable, os.path.abspath(__file__), "inner", spec["spec_path"]]
    )


def _enter_private_users(uid: int) -> None:
    """PrivateUsers=: a user namespace where root and the service's uid map to themselves.

    Only a process outside may write the maps, so this forks, as systemd does: the child
    unshares and goes on (with every capability inside the namespace, until it drops them);
    the parent writes the child's maps, waits for it and exits with its status."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            raise HarnessError("the user namespace's maps were not written")
        return
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) == b"1":
        maps = f"0 0 1\n{uid} {uid} 1\n"
        Path(f"/proc/{pid}/uid_map").write_text(maps)
        Path(f"/proc/{pid}/gid_map").write_text(maps)
        os.write(go_w, b"1")
    os.close(go_w)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.flush()
    os._exit(code if code >= 0 else 128 - code)


def _private_dev() -> None:
    stage = "/tmp/.harness-dev"
    os.mkdir(stage)
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            Path(stage, name).touch()
            mount(f"/dev/{name}", f"{stage}/{name}", None, MS_BIND)
    os.mkdir(f"{stage}/pts")
    mount(
        "devpts",
        f"{stage}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
    )
    os.symlink("pts/ptmx", f"{stage}/ptmx")
    os.mkdir(f"{stage}/shm")
    mount("tmpfs", f"{stage}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{stage}/{name}")
    mount(stage, "/dev", None, MS_MOVE)


# -- inner: umask, seccomp, exec --------------------------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_LT, SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 2, 4, 6, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
NAMESPACE_FLAGS = (  # systemd 252's RestrictNamespaces= kinds
    0x02000000,  # CLONE_NEWCGROUP
    0x08000000,  # CLONE_NEWIPC
    0x40000000,  # CLONE_NEWNET
    0x00020000,  # CLONE_NEWNS
    0x20000000,  # CLONE_NEWPID
    0x10000000,  # CLONE_NEWUSER
    0x04000000,  # CLONE_NEWUTS
)


def act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class Filter:
    """One libseccomp filter context."""

    def __init__(self, lib: ctypes.CDLL, default: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(default)
        if not self.ctx:
            raise HarnessError("seccomp_init failed")

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall of this architecture: systemd skips it too
            return
        array = (ArgCmp * max(1, len(cmps)))(*(ArgCmp(*c) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), array)
        if rc < 0:
            raise HarnessError(f"seccomp rule for {name}: {os.strerror(-rc)}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if rc < 0:
            raise HarnessError(f"seccomp_load: {os.strerror(-rc)}")


def _libseccomp(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def inner(spec: dict[str, Any]) -> None:
    os.chdir("/")  # WorkingDirectory= defaults to / for system services
    os.umask(spec["umask"])
    lib = _libseccomp(spec["libseccomp"])
    if spec["memory_deny_write_execute"]:
        mdwe = Filter(lib, SCMP_ACT_ALLOW)
        deny = act_errno(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        mdwe.rule(deny, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
        mdwe.rule(deny, "mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        mdwe.rule(deny, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        mdwe.rule(deny, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        mdwe.load()
        # Newer systemd also sets the kernel's own flag; use it where the kernel has it.
        if prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) < 0 and ctypes.get_errno() != errno.EINVAL:
            raise HarnessError(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}")
    if spec["address_families"]:
        families = Filter(lib, SCMP_ACT_ALLOW)
        allowed = sorted(spec["address_families"])
        refuse = act_errno(errno.EAFNOSUPPORT)
        families.rule(refuse, "socket", (0, SCMP_CMP_LT, allowed[0], 0))
        families.rule(refuse, "socket", (0, SCMP_CMP_GT, allowed[-1], 0))
        for family in range(allowed[0] + 1, allowed[-1]):
            if family not in allowed:
                families.rule(refuse, "socket", (0, SCMP_CMP_EQ, family, 0))
        families.load()
    if spec["restrict_namespaces"]:
        namespaces = Filter(lib, SCMP_ACT_ALLOW)
        namespaces.rule(act_errno(errno.ENOSYS), "clone3")  # flags out of reach: glibc falls back
        namespaces.rule(act_errno(errno.EPERM), "setns")
        for flag in NAMESPACE_FLAGS:
            namespaces.rule(act_errno(errno.EPERM), "unshare", (0, SCMP_CMP_MASKED_EQ, flag, flag))
            namespaces.rule(act_errno(errno.EPERM), "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        namespaces.load()
    if spec["syscalls_allowed"]:
        allow = Filter(lib, act_errno(spec["syscall_errno"]))
        for name in spec["syscalls_allowed"]:
            allow.rule(SCMP_ACT_ALLOW, name)
        allow.load()
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def main(argv: list[str]) -> int:
    stage, spec_path = argv[1], argv[2]
    spec = json.loads(Path(spec_path).read_text())
    spec["spec_path"] = spec_path
    try:
        outer(spec) if stage == "outer" else inner(spec)
    except (HarnessError, OSError) as exc:
        print(f"harness {stage}: {exc}", file=sys.stderr)
        return 125
    return 125  # not reached: both stages end in exec


if __name__ == "__main__":
    sys.exit(main(sys.argv))

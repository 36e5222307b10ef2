"""A small seccomp filter for the sandbox, assembled here as classic BPF (no libseccomp needed).

bwrap loads it (`--seccomp FD`) just before starting the runner; it also sets no-new-privs.
It refuses what sandboxed code has no business doing and what widens the kernel's attack surface:
- new namespaces of any kind (clone/unshare with CLONE_NEW*), entering others (setns) and
  clone3 (its flags hide behind a pointer; it fails with ENOSYS, so libc falls back to clone);
- mounting, keyrings, bpf, perf events, userfaultfd, io_uring, ptrace and cross-process memory
  access, module and kexec loading, file-handle opens;
- the TIOCSTI and TIOCLINUX ioctls (typing into a terminal);
- any system call of a foreign ABI (i386 via int 0x80, x32): the process is killed.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from dataclasses import dataclass

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_KILL = 0x80000000  # SECCOMP_RET_KILL_PROCESS
_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1 = 0, 4, 16, 24
CLONE_NEW_MASK = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_X32_BIT = 0x40000000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C


@dataclass(frozen=True)
class Abi:
    audit_arch: int
    denied: tuple[int, ...]
    clone: int
    unshare: int
    clone3: int
    ioctl: int
    x32: bool  # the x32 ABI shares the syscall entry: its numbers carry bit 30


# Refused with EPERM: name -> (x86_64 number, arm64 number), from the kernel's syscall tables
# (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
DENIED = {
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
}
ABIS = {
    "x86_64": Abi(0xC000003E, tuple(n[0] for n in DENIED.values()), 56, 272, 435, 16, x32=True),
    "aarch64": Abi(0xC00000B7, tuple(n[1] for n in DENIED.values()), 220, 97, 435, 29, x32=False),
}


class _Program:
    """Instructions with symbolic jump targets, resolved to BPF's relative offsets at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self.code):
            out += struct.pack("=HBBI", code, self._offset(jt, index), self._offset(jf, index), k)
        return bytes(out)

    def _offset(self, target: str | int, index: int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        assert 0 <= offset < 256
        return offset


def build(machine: str | None = None) -> bytes:
    """The filter for this machine's ABI; raises KeyError for an architecture without a table."""
    abi = ABIS[machine or platform.machine()]
    prog = _Program()
    prog.op(_LD_ABS, _OFF_ARCH)
    prog.op(_JEQ, abi.audit_arch, 0, "kill")
    prog.op(_LD_ABS, _OFF_NR)
    if abi.x32:
        prog.op(_JGE, _X32_BIT, "kill", 0)
    for number in abi.denied:
        prog.op(_JEQ, number, "eperm", 0)
    prog.op(_JEQ, abi.clone3, "enosys", 0)
    prog.op(_JEQ, abi.clone, "flags", 0)
    prog.op(_JEQ, abi.unshare, "flags", 0)
    prog.op(_JEQ, abi.ioctl, "ioctl", 0)
    prog.op(_RET, _ALLOW)
    prog.label("flags")
    prog.op(_LD_ABS, _OFF_ARG0)
    prog.op(_JSET, CLONE_NEW_MASK, "eperm", 0)
    prog.op(_RET, _ALLOW)
    prog.label("ioctl")
    prog.op(_LD_ABS, _OFF_ARG1)
    prog.op(_JEQ, TIOCSTI, "eperm", 0)
    prog.op(_JEQ, TIOCLINUX, "eperm", 0)
    prog.op(_RET, _ALLOW)
    prog.label("eperm")
    prog.op(_RET, _ERRNO | errno.EPERM)
    prog.label("enosys")
    prog.op(_RET, _ERRNO | errno.ENOSYS)
    prog.label("kill")
    prog.op(_RET, _KILL)
    return prog.assemble()


def filter_fd() -> int:
    """A memfd holding the filter, positioned at its start, for `bwrap --seccomp FD`."""
    fd = os.memfd_create("flywheel-seccomp")
    os.write(fd, build())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd

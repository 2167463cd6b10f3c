"""A tensor stand-in that claims to live on a CUDA device (DLPack kDLCUDA), for device checks on CPU-only machines."""

from __future__ import annotations

import ctypes

import torch

KDLCUDA = 2
_CODES = {torch.float32: (2, 32), torch.bfloat16: (4, 16), torch.float16: (2, 16),
          torch.int32: (0, 32), torch.int64: (0, 64)}


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32), ("dtype", _DType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _Managed(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class FakeCudaTensor:
    """Exports `like`'s dtype/shape (and host pointer) through DLPack as if it were on cuda:0.

    The memory is host memory, so a kernel that trusted the claim would read the wrong
    address space: the extension must refuse it with a Python exception.
    """

    def __init__(self, like: torch.Tensor):
        self._keep = like.contiguous()
        n = like.ndim
        self._shape = (ctypes.c_int64 * max(n, 1))(*like.shape)
        self._strides = (ctypes.c_int64 * max(n, 1))(*self._keep.stride())
        code, bits = _CODES[like.dtype]
        self._managed = _Managed()
        t = self._managed.dl_tensor
        t.data = self._keep.data_ptr()
        t.device = _Device(KDLCUDA, 0)
        t.ndim = n
        t.dtype = _DType(code, bits, 1)
        t.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        t.strides = ctypes.cast(self._strides, ctypes.POINTER(ctypes.c_int64))
        t.byte_offset = 0
        self._managed.manager_ctx = None
        self._managed.deleter = None  # memory is owned by self._keep

    def __dlpack__(self, stream=None, **kwargs):
        return _capsule_new(ctypes.addressof(self._managed), b"dltensor", None)

    def __dlpack_device__(self):
        return (KDLCUDA, 0)

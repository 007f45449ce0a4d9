/* Compiled fast path of trainer/data/example.py: `_decode_canonical` in C.
 *
 * decode_canonical(buf: bytes) -> dict | None decodes the layout TensorFlow writes (one Example.features
 * field; each map entry as key then value with a one-byte key length; each Feature with at most one kind
 * field holding one packed run) and returns None for anything else, exactly where the Python reference
 * `_decode_canonical` returns None; the generic Python parser then decides the result or the error.
 * tests/data/test_example_fast.py checks the two agree on valid, truncated, mutated and random bytes.
 *
 * Results, identical to the Python path's: float lists are read-only zero-copy np.frombuffer views over
 * `buf`; int64 lists are fresh writable int64 arrays; bytes lists are lists of bytes; a Feature with no kind
 * is []. Numpy is reached only through the callables handed to _configure (so building needs nothing but a
 * C compiler and Python.h, no numpy headers).
 *
 * Memory safety: every read is checked against the buffer's size, lengths are compared as unsigned 64-bit
 * values against the bytes that remain (never added first, so a length near 2**64 cannot wrap), and varints
 * longer than 10 bytes are rejected as the Python reader rejects them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* np.frombuffer, np.empty, np.dtype("<f4"), np.dtype("int64"): set once by _configure. */
static PyObject *g_frombuffer = NULL;
static PyObject *g_empty = NULL;
static PyObject *g_f32 = NULL;
static PyObject *g_i64 = NULL;

/* The Python reader `_read_varint`: at most 10 bytes, value kept modulo 2**64; 0 when truncated at `end` or
 * longer than 10 bytes. */
static inline int read_varint(const uint8_t *b, Py_ssize_t pos, Py_ssize_t end, uint64_t *value,
                              Py_ssize_t *next) {
    uint64_t result = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (pos >= end) return 0;
        uint8_t byte = b[pos++];
        result |= (uint64_t)(byte & 0x7F) << shift; /* shift <= 63: bits past 64 drop, as `& _MASK64` */
        if (byte < 0x80) {
            *value = result;
            *next = pos;
            return 1;
        }
    }
    return 0;
}

/* Whether [pos, stop) holds exactly `n` more bytes after pos (pos may lie past stop). */
static inline int fills_to(Py_ssize_t pos, uint64_t n, Py_ssize_t stop) {
    return pos <= stop && n == (uint64_t)(stop - pos);
}

/* Calls a cached numpy callable with two or four positional arguments (vectorcall, no tuple). */
static PyObject *call_np(PyObject *fn, PyObject *a0, PyObject *a1, PyObject *a2, PyObject *a3) {
    PyObject *args[4] = {a0, a1, a2, a3};
    return PyObject_Vectorcall(fn, args, a2 == NULL ? 2 : 4, NULL);
}

/* np.empty(count, dtype); 0 values filled in (the caller fills them). */
static PyObject *empty_array(Py_ssize_t count, PyObject *dtype) {
    PyObject *n = PyLong_FromSsize_t(count);
    if (n == NULL) return NULL;
    PyObject *arr = call_np(g_empty, n, dtype, NULL, NULL);
    Py_DECREF(n);
    return arr;
}

/* Sentinel for "not the canonical layout": the caller returns None. */
static PyObject REJECT_OBJ;
#define REJECT (&REJECT_OBJ)

/* The BytesList body [s, stop) as a list of bytes (Python `_bytes_run`), REJECT, or NULL with an error. */
static PyObject *bytes_run(const uint8_t *b, Py_ssize_t size, Py_ssize_t s, Py_ssize_t stop) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    while (s < stop) {
        uint64_t n;
        if (b[s] != 0x0A || s + 1 >= size) goto reject;
        n = b[s + 1];
        s += 2;
        if (n >= 0x80 && !read_varint(b, s - 1, stop, &n, &s)) goto reject;
        if (s > stop || n > (uint64_t)(stop - s)) goto reject;
        PyObject *item = PyBytes_FromStringAndSize((const char *)b + s, (Py_ssize_t)n);
        if (item == NULL) goto error;
        int rc = PyList_Append(out, item);
        Py_DECREF(item);
        if (rc < 0) goto error;
        s += (Py_ssize_t)n;
    }
    return out;
reject:
    Py_DECREF(out);
    return REJECT;
error:
    Py_DECREF(out);
    return NULL;
}

/* The packed Int64List run [s, stop) as a fresh int64 array, REJECT, or NULL with an error. */
static PyObject *int64_run(const uint8_t *b, Py_ssize_t s, Py_ssize_t stop) {
    Py_ssize_t count = 0;
    uint64_t v;
    for (Py_ssize_t pos = s; pos < stop; count++) {
        if (!read_varint(b, pos, stop, &v, &pos)) return REJECT;
    }
    PyObject *arr = empty_array(count, g_i64);
    if (arr == NULL || count == 0) return arr;
    Py_buffer view;
    if (PyObject_GetBuffer(arr, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    if (view.len != count * (Py_ssize_t)sizeof(int64_t)) {
        PyBuffer_Release(&view);
        Py_DECREF(arr);
        PyErr_SetString(PyExc_RuntimeError, "_example_fast: np.empty gave an unexpected buffer");
        return NULL;
    }
    char *dst = (char *)view.buf;
    for (Py_ssize_t pos = s, i = 0; i < count; i++) {
        read_varint(b, pos, stop, &v, &pos); /* validated above */
        int64_t signed_v = (int64_t)v;       /* two's complement, as `v - (1 << 64) if v >= 1 << 63` */
        memcpy(dst + i * (Py_ssize_t)sizeof(int64_t), &signed_v, sizeof signed_v);
    }
    PyBuffer_Release(&view);
    return arr;
}

/* np.frombuffer(buf, float32, count, offset): a read-only view. */
static PyObject *float_view(PyObject *buf, Py_ssize_t count, Py_ssize_t offset) {
    PyObject *n = PyLong_FromSsize_t(count);
    if (n == NULL) return NULL;
    PyObject *off = PyLong_FromSsize_t(offset);
    if (off == NULL) {
        Py_DECREF(n);
        return NULL;
    }
    PyObject *arr = call_np(g_frombuffer, buf, g_f32, n, off);
    Py_DECREF(n);
    Py_DECREF(off);
    return arr;
}

/* One Feature message's value, body [q, stop): mirrors the `value = ...` part of `_decode_canonical`. */
static PyObject *feature_value(PyObject *buf, const uint8_t *b, Py_ssize_t size, Py_ssize_t q,
                               Py_ssize_t stop) {
    uint64_t n;
    Py_ssize_t r, s;
    if (q == stop) return PyList_New(0); /* a Feature with no kind set */
    uint8_t kind = b[q];
    if (!read_varint(b, q + 1, size, &n, &r) || !fills_to(r, n, stop)) return REJECT;
    if (kind == 0x0A) return bytes_run(b, size, r, stop);
    if (kind != 0x12 && kind != 0x1A) return REJECT;
    if (r == stop) return empty_array(0, kind == 0x12 ? g_f32 : g_i64);
    /* The one packed field 1 of the list. Python reads a one-byte length with buf[r + 1] (bounded by the
     * whole buffer) and a longer one bounded by `stop`; either way only a varint that ends by `stop`
     * passes its `s + n == stop` check, which a varint bounded by `stop` gives exactly. */
    if (b[r] != 0x0A || !read_varint(b, r + 1, stop, &n, &s) || !fills_to(s, n, stop)) return REJECT;
    if (kind == 0x12) {
        if (n & 3) return REJECT;
        return float_view(buf, (Py_ssize_t)(n >> 2), s);
    }
    return int64_run(b, s, stop);
}

static PyObject *decode_canonical(PyObject *self, PyObject *buf) {
    (void)self;
    if (!PyBytes_Check(buf)) {
        PyErr_Format(PyExc_TypeError, "decode_canonical() takes bytes, not %.100s", Py_TYPE(buf)->tp_name);
        return NULL;
    }
    if (g_frombuffer == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_example_fast: call _configure() first");
        return NULL;
    }
    const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(buf);
    const Py_ssize_t end = PyBytes_GET_SIZE(buf);
    PyObject *out = PyDict_New();
    if (out == NULL || end == 0) return out;
    PyObject *value = NULL, *key = NULL;
    uint64_t n;
    Py_ssize_t pos, p, q;

    /* Example: 0A len | entries, the length covering the rest exactly. */
    if (b[0] != 0x0A || !read_varint(b, 1, end, &n, &pos) || !fills_to(pos, n, end)) goto reject;
    while (pos < end) {
        /* Map entry: 0A len | 0A klen key | 12 vlen | Feature body */
        if (b[pos] != 0x0A || !read_varint(b, pos + 1, end, &n, &p)) goto reject;
        if (n > (uint64_t)(end - p)) goto reject;
        const Py_ssize_t stop = p + (Py_ssize_t)n;
        if (p + 1 >= end || b[p] != 0x0A || b[p + 1] >= 0x80) goto reject;
        const Py_ssize_t klen = b[p + 1];
        const Py_ssize_t kstop = p + 2 + klen;
        if (kstop >= end || b[kstop] != 0x12) goto reject;
        if (!read_varint(b, kstop + 1, end, &n, &q) || !fills_to(q, n, stop)) goto reject;

        value = feature_value(buf, b, end, q, stop);
        if (value == REJECT) {
            value = NULL;
            goto reject;
        }
        if (value == NULL) goto error;
        key = PyUnicode_DecodeUTF8((const char *)b + p + 2, klen, NULL);
        if (key == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                goto reject;
            }
            goto error;
        }
        if (PyDict_SetItem(out, key, value) < 0) goto error;
        Py_CLEAR(key);
        Py_CLEAR(value);
        pos = stop;
    }
    return out;
reject:
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_DECREF(out);
    return NULL;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *frombuffer, *empty, *f32, *i64;
    if (!PyArg_ParseTuple(args, "OOOO:_configure", &frombuffer, &empty, &f32, &i64)) return NULL;
    if (!PyCallable_Check(frombuffer) || !PyCallable_Check(empty)) {
        PyErr_SetString(PyExc_TypeError, "_configure(frombuffer, empty, float32, int64): not callables");
        return NULL;
    }
    Py_INCREF(frombuffer);
    Py_INCREF(empty);
    Py_INCREF(f32);
    Py_INCREF(i64);
    Py_XSETREF(g_frombuffer, frombuffer);
    Py_XSETREF(g_empty, empty);
    Py_XSETREF(g_f32, f32);
    Py_XSETREF(g_i64, i64);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_canonical", decode_canonical, METH_O,
     "decode_canonical(buf: bytes) -> dict | None\n\nThe C twin of example._decode_canonical."},
    {"_configure", configure, METH_VARARGS,
     "_configure(frombuffer, empty, float32_dtype, int64_dtype)\n\nHands over the numpy callables and "
     "dtypes (once, from trainer.data.example)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_example_fast",
    .m_doc = "Compiled fast path of trainer.data.example (see decode_canonical).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__example_fast(void) { return PyModule_Create(&module); }

/* spcomp.runtime.fastentry: a kernel's repeated call in native code.
 *
 * runtime/fastcall.py's FastCall checks that a call's operands are those of an
 * earlier one and replays its argument list. Done in Python, a warm call costs
 * ~4 us and a call with cold host caches ~80 us, most of it the interpreter
 * touching its own objects and ctypes converting arguments. An Entry does the
 * same checks here and calls the kernel's native function directly: the very
 * Tensor (a weak reference's target), an ndarray's exact type, shape, strides
 * and dtype (the same descriptor object), a given output's layout and flags,
 * the thread count and split generation the call was planned under. Whatever
 * it cannot decide by those alone (a dtype equal but not identical, a given
 * output that needs the overlap check, a thread cap on this thread) it answers
 * MISS, and the Python path decides, exactly as before. runtime/native_entry.py
 * builds Entries and says which FastCalls may have one.
 *
 * Every argument of a kernel's entry function is integer class (a pointer, a
 * 32- or 64-bit size): passed here as 64-bit integers, which the x86-64 and
 * AArch64 calling conventions read as the narrower ones (native_entry.py checks
 * the argument types before building an Entry).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_ARGS 48
#define MAX_DIMS 8
#define MAX_SLOTS 8

enum { TENSOR = 0, ARRAY = 1, SCIPY = 2 };  /* runtime/fastcall.py's check kinds, the same numbers */
enum { ALLOC_CALL = 0, ALLOC_ZEROS = 1, ALLOC_EMPTY = 2 };

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

typedef struct {
    PyObject *name;   /* the operand's name (a str) */
    PyObject *ref;    /* a weak reference to the last call's object */
    int kind;
    int nd;
    Py_ssize_t shape[MAX_DIMS];
    Py_ssize_t strides[MAX_DIMS];
    PyObject *descr;  /* the dtype object, the very one */
    int nslots;
    int slots[MAX_SLOTS];
    /* a SciPy matrix: weak references to its arrays and to the Tensor made of it,
       its shape, and its row extents as bytes */
    PyObject *data, *indices, *indptr, *converted, *sshape, *extents;
} Check;

typedef struct {
    PyObject_HEAD
    void *fn;
    int nargs;
    int64_t args[MAX_ARGS];
    int ncheck;
    Check *checks;
    Py_ssize_t count;       /* operands a call passes */
    PyTypeObject *ndarray;
    /* the output: made here (ALLOC_ZEROS, ALLOC_EMPTY) or by `alloc` (no arguments), or given by name */
    int alloc_kind;
    PyObject *alloc;
    PyObject *out_name;     /* NULL unless the caller passes the output */
    int out_nd;
    Py_ssize_t out_shape[MAX_DIMS];
    PyObject *out_descr;
    Py_ssize_t out_nbytes;
    int zero_given;
    PyObject *apart;        /* a list: [weak reference to the last output found apart from the inputs] */
    int nout;
    int out_slots[MAX_SLOTS];
    int scalar;             /* a 0-d output returned as a Python scalar */
    /* the thread count it was planned for (0: any) and the split it was decided under */
    PyObject *threads_ns;   /* runtime.threads' module dict */
    long threads;
    PyObject *split_state;  /* threads.split_state (a list), NULL when no split was decided */
    long generation;
    PyObject *hold;         /* threads.hold (a list) */
    PyObject *keep;         /* objects whose memory the arguments point into */
} Entry;

static PyObject *MISS;
static PyObject *NAME_NUM_THREADS, *NAME_LIMITED, *NAME_ITEM;
static PyObject *NAME_DATA, *NAME_INDICES, *NAME_INDPTR, *NAME_SHAPE;

static PyObject *weak_target(PyObject *ref) {
    /* the borrowed target of a weak reference; NULL when it died (so that no
       operand, None included, ever matches a dead one) */
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj;
    if (PyWeakref_GetRef(ref, &obj) <= 0) { PyErr_Clear(); return NULL; }
    Py_DECREF(obj);  /* the caller holds the operand itself: borrowed is safe */
    return obj;
#else
    PyObject *obj = PyWeakref_GET_OBJECT(ref);
    return obj == Py_None ? NULL : obj;
#endif
}

static long int_or(PyObject *v, long otherwise) {
    if (v == NULL || !PyLong_CheckExact(v)) return otherwise;
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) { PyErr_Clear(); return otherwise; }
    return x;
}

/* the kernel called with its n arguments: one case per argument count */
#define T int64_t
#define TYPES1 T
#define ARGS1 a[0]
#define TYPES2 TYPES1, T
#define ARGS2 ARGS1, a[1]
#define TYPES3 TYPES2, T
#define ARGS3 ARGS2, a[2]
#define TYPES4 TYPES3, T
#define ARGS4 ARGS3, a[3]
#define TYPES5 TYPES4, T
#define ARGS5 ARGS4, a[4]
#define TYPES6 TYPES5, T
#define ARGS6 ARGS5, a[5]
#define TYPES7 TYPES6, T
#define ARGS7 ARGS6, a[6]
#define TYPES8 TYPES7, T
#define ARGS8 ARGS7, a[7]
#define TYPES9 TYPES8, T
#define ARGS9 ARGS8, a[8]
#define TYPES10 TYPES9, T
#define ARGS10 ARGS9, a[9]
#define TYPES11 TYPES10, T
#define ARGS11 ARGS10, a[10]
#define TYPES12 TYPES11, T
#define ARGS12 ARGS11, a[11]
#define TYPES13 TYPES12, T
#define ARGS13 ARGS12, a[12]
#define TYPES14 TYPES13, T
#define ARGS14 ARGS13, a[13]
#define TYPES15 TYPES14, T
#define ARGS15 ARGS14, a[14]
#define TYPES16 TYPES15, T
#define ARGS16 ARGS15, a[15]
#define TYPES17 TYPES16, T
#define ARGS17 ARGS16, a[16]
#define TYPES18 TYPES17, T
#define ARGS18 ARGS17, a[17]
#define TYPES19 TYPES18, T
#define ARGS19 ARGS18, a[18]
#define TYPES20 TYPES19, T
#define ARGS20 ARGS19, a[19]
#define TYPES21 TYPES20, T
#define ARGS21 ARGS20, a[20]
#define TYPES22 TYPES21, T
#define ARGS22 ARGS21, a[21]
#define TYPES23 TYPES22, T
#define ARGS23 ARGS22, a[22]
#define TYPES24 TYPES23, T
#define ARGS24 ARGS23, a[23]
#define TYPES25 TYPES24, T
#define ARGS25 ARGS24, a[24]
#define TYPES26 TYPES25, T
#define ARGS26 ARGS25, a[25]
#define TYPES27 TYPES26, T
#define ARGS27 ARGS26, a[26]
#define TYPES28 TYPES27, T
#define ARGS28 ARGS27, a[27]
#define TYPES29 TYPES28, T
#define ARGS29 ARGS28, a[28]
#define TYPES30 TYPES29, T
#define ARGS30 ARGS29, a[29]
#define TYPES31 TYPES30, T
#define ARGS31 ARGS30, a[30]
#define TYPES32 TYPES31, T
#define ARGS32 ARGS31, a[31]
#define TYPES33 TYPES32, T
#define ARGS33 ARGS32, a[32]
#define TYPES34 TYPES33, T
#define ARGS34 ARGS33, a[33]
#define TYPES35 TYPES34, T
#define ARGS35 ARGS34, a[34]
#define TYPES36 TYPES35, T
#define ARGS36 ARGS35, a[35]
#define TYPES37 TYPES36, T
#define ARGS37 ARGS36, a[36]
#define TYPES38 TYPES37, T
#define ARGS38 ARGS37, a[37]
#define TYPES39 TYPES38, T
#define ARGS39 ARGS38, a[38]
#define TYPES40 TYPES39, T
#define ARGS40 ARGS39, a[39]
#define TYPES41 TYPES40, T
#define ARGS41 ARGS40, a[40]
#define TYPES42 TYPES41, T
#define ARGS42 ARGS41, a[41]
#define TYPES43 TYPES42, T
#define ARGS43 ARGS42, a[42]
#define TYPES44 TYPES43, T
#define ARGS44 ARGS43, a[43]
#define TYPES45 TYPES44, T
#define ARGS45 ARGS44, a[44]
#define TYPES46 TYPES45, T
#define ARGS46 ARGS45, a[45]
#define TYPES47 TYPES46, T
#define ARGS47 ARGS46, a[46]
#define TYPES48 TYPES47, T
#define ARGS48 ARGS47, a[47]
#define CASE(n) case n: return ((int32_t (*)(TYPES##n))fn)(ARGS##n);

static int32_t call_kernel(void *fn, int n, const int64_t *a) {
    switch (n) {
    case 0: return ((int32_t (*)(void))fn)();
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
    CASE(13) CASE(14) CASE(15) CASE(16) CASE(17) CASE(18) CASE(19) CASE(20) CASE(21) CASE(22) CASE(23) CASE(24)
    CASE(25) CASE(26) CASE(27) CASE(28) CASE(29) CASE(30) CASE(31) CASE(32) CASE(33) CASE(34) CASE(35) CASE(36)
    CASE(37) CASE(38) CASE(39) CASE(40) CASE(41) CASE(42) CASE(43) CASE(44) CASE(45) CASE(46) CASE(47) CASE(48)
    }
    return -1;
}

static int planned_here(Entry *e) {
    /* whether this thread's thread count and the split state are those the call was made under */
    if (e->threads) {
        if (int_or(PyDict_GetItem(e->threads_ns, NAME_LIMITED), -1) != 0) return 0;  /* a thread_limit somewhere */
        if (int_or(PyDict_GetItem(e->threads_ns, NAME_NUM_THREADS), -1) != e->threads) return 0;
    }
    if (e->split_state) {
        if (int_or(PyList_GET_ITEM(e->split_state, 0), -1) != e->generation) return 0;
        PyObject *h = PyList_GET_ITEM(e->hold, 0);
        if (!(PyFloat_CheckExact(h) && PyFloat_AS_DOUBLE(h) == 0.0) && int_or(h, 1) != 0) return 0;
    }
    return 1;
}

static int same_layout(PyArrayObject *x, int nd, const Py_ssize_t *shape, const Py_ssize_t *strides, PyObject *descr) {
    if (PyArray_NDIM(x) != nd || (PyObject *)PyArray_DESCR(x) != descr) return 0;
    for (int d = 0; d < nd; d++) {
        if (PyArray_DIMS(x)[d] != shape[d]) return 0;
        if (strides && PyArray_STRIDES(x)[d] != strides[d]) return 0;
    }
    return 1;
}

static int attribute_is(PyObject *v, PyObject *name, PyObject *ref) {
    /* whether v.name is the target of the weak reference ref */
    PyObject *a = PyObject_GetAttr(v, name);
    if (a == NULL) { PyErr_Clear(); return 0; }
    int same = a == weak_target(ref);
    Py_DECREF(a);
    return same;
}

static int scipy_unchanged(Entry *e, Check *k, PyObject *v) {
    /* runtime/operands.py's scipy_unchanged: the same arrays, shape and row extents */
    if (weak_target(k->converted) == NULL) return 0;
    if (!attribute_is(v, NAME_DATA, k->data) || !attribute_is(v, NAME_INDICES, k->indices)) return 0;
    PyObject *ip = PyObject_GetAttr(v, NAME_INDPTR);
    if (ip == NULL) { PyErr_Clear(); return 0; }
    int same = 0;
    if (ip == weak_target(k->indptr) && Py_TYPE(ip) == e->ndarray) {
        PyArrayObject *x = (PyArrayObject *)ip;
        Py_ssize_t n = PyBytes_GET_SIZE(k->extents);
        same = PyArray_NDIM(x) == 1 && (PyArray_FLAGS(x) & NPY_ARRAY_C_CONTIGUOUS) && PyArray_DIMS(x)[0] > 0
               && n % PyArray_DIMS(x)[0] == 0 && PyArray_STRIDES(x)[0] == n / PyArray_DIMS(x)[0]
               && memcmp(PyArray_DATA(x), PyBytes_AS_STRING(k->extents), (size_t)n) == 0;
    }
    Py_DECREF(ip);
    if (!same) return 0;
    PyObject *shape = PyObject_GetAttr(v, NAME_SHAPE);
    if (shape == NULL) { PyErr_Clear(); return 0; }
    int eq = PyObject_RichCompareBool(shape, k->sshape, Py_EQ);
    Py_DECREF(shape);
    if (eq < 0) { PyErr_Clear(); return 0; }
    return eq;
}

static PyObject *entry_run(Entry *e, PyObject *ops) {
    if (!PyDict_CheckExact(ops) || PyDict_GET_SIZE(ops) != e->count || !planned_here(e)) goto miss;
    int64_t a[MAX_ARGS];
    memcpy(a, e->args, sizeof(int64_t) * (size_t)e->nargs);
    int swapped = 0;
    for (int c = 0; c < e->ncheck; c++) {
        Check *k = &e->checks[c];
        PyObject *v = PyDict_GetItem(ops, k->name);
        if (v == NULL) goto miss;
        if (k->kind == TENSOR) {
            if (v != weak_target(k->ref)) goto miss;
            continue;
        }
        if (k->kind == SCIPY) {
            if (v != weak_target(k->ref) || !scipy_unchanged(e, k, v)) goto miss;
            continue;
        }
        if (Py_TYPE(v) != e->ndarray) goto miss;
        PyArrayObject *x = (PyArrayObject *)v;
        if (!same_layout(x, k->nd, k->shape, k->strides, k->descr)) goto miss;
        if (v != weak_target(k->ref)) swapped = 1;
        for (int s = 0; s < k->nslots; s++) a[k->slots[s]] = (int64_t)(intptr_t)PyArray_DATA(x);
    }
    PyObject *out;
    if (e->out_name != NULL) {
        out = PyDict_GetItem(ops, e->out_name);
        if (out == NULL || Py_TYPE(out) != e->ndarray) goto miss;
        PyArrayObject *o = (PyArrayObject *)out;
        if (!same_layout(o, e->out_nd, e->out_shape, NULL, e->out_descr)
                || (PyArray_FLAGS(o) & (NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_WRITEABLE)) != (NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_WRITEABLE))
            goto miss;
        /* the overlap check ran for this very output, with these very inputs? (else Python runs it) */
        PyObject *last = PyList_GET_ITEM(e->apart, 0);
        if (swapped || !PyWeakref_CheckRef(last) || weak_target(last) != out) goto miss;
        Py_INCREF(out);
        if (e->zero_given) memset(PyArray_DATA(o), 0, (size_t)e->out_nbytes);
    } else {
        if (e->alloc_kind == ALLOC_CALL) {
            out = PyObject_CallNoArgs(e->alloc);
        } else {  /* what np.zeros / np.empty make, without parsing their arguments */
            npy_intp dims[MAX_DIMS];
            for (int d = 0; d < e->out_nd; d++) dims[d] = (npy_intp)e->out_shape[d];
            Py_INCREF(e->out_descr);  /* (stolen) */
            out = e->alloc_kind == ALLOC_ZEROS
                ? PyArray_Zeros(e->out_nd, dims, (PyArray_Descr *)e->out_descr, 0)
                : PyArray_Empty(e->out_nd, dims, (PyArray_Descr *)e->out_descr, 0);
        }
        if (out == NULL) return NULL;
        if (Py_TYPE(out) != e->ndarray) { Py_DECREF(out); goto miss; }
    }
    int64_t p = (int64_t)(intptr_t)PyArray_DATA((PyArrayObject *)out);
    for (int s = 0; s < e->nout; s++) a[e->out_slots[s]] = p;
    int32_t status;
    Py_BEGIN_ALLOW_THREADS
    status = call_kernel(e->fn, e->nargs, a);
    Py_END_ALLOW_THREADS
    if (status != 0) {  /* (status,): the Python side raises the matching error */
        Py_DECREF(out);
        return Py_BuildValue("(i)", (int)status);
    }
    if (e->scalar) {
        PyObject *item = PyObject_CallMethodNoArgs(out, NAME_ITEM);
        Py_DECREF(out);
        return item;
    }
    return out;
miss:
    Py_INCREF(MISS);
    return MISS;
}

/* ------------------------------------------------------------------ the type */

static void entry_dealloc(Entry *e) {
    for (int c = 0; c < e->ncheck; c++) {
        Py_XDECREF(e->checks[c].name);
        Py_XDECREF(e->checks[c].ref);
        Py_XDECREF(e->checks[c].descr);
        Py_XDECREF(e->checks[c].data);
        Py_XDECREF(e->checks[c].indices);
        Py_XDECREF(e->checks[c].indptr);
        Py_XDECREF(e->checks[c].converted);
        Py_XDECREF(e->checks[c].sshape);
        Py_XDECREF(e->checks[c].extents);
    }
    PyMem_Free(e->checks);
    Py_XDECREF(e->ndarray);
    Py_XDECREF(e->alloc);
    Py_XDECREF(e->out_name);
    Py_XDECREF(e->out_descr);
    Py_XDECREF(e->apart);
    Py_XDECREF(e->threads_ns);
    Py_XDECREF(e->split_state);
    Py_XDECREF(e->hold);
    Py_XDECREF(e->keep);
    PyObject_Free(e);
}

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "spcomp.runtime.fastentry.Entry",
    .tp_basicsize = sizeof(Entry),
    .tp_dealloc = (destructor)entry_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A kernel's repeated call, checked and made in native code (see make).",
};

static int ssize_list(PyObject *seq, Py_ssize_t *out, int most, const char *what) {
    /* the integers of a tuple or list into out; -1 (and an error) when there are too many */
    Py_ssize_t n = PySequence_Size(seq);
    if (n < 0) return -1;
    if (n > most) { PyErr_Format(PyExc_ValueError, "too many %s (%zd > %d)", what, n, most); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_GetItem(seq, i);
        if (v == NULL) return -1;
        out[i] = PyLong_AsSsize_t(v);
        Py_DECREF(v);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return (int)n;
}

static int int_list(PyObject *seq, int *out, int most, const char *what) {
    /* as ssize_list, into ints (slot numbers, below MAX_ARGS) */
    Py_ssize_t wide[MAX_ARGS];
    int n = ssize_list(seq, wide, most < MAX_ARGS ? most : MAX_ARGS, what);
    for (int i = 0; i < n; i++) out[i] = (int)wide[i];
    return n;
}

#define KEEP(field, value) do { Py_INCREF(value); e->field = (value); } while (0)

static PyObject *make(PyObject *module, PyObject *args) {
    PyObject *fn, *template, *checks, *ndarray, *alloc, *out_name, *out_shape, *out_descr, *apart, *out_slots;
    int alloc_kind;
    PyObject *threads_ns, *split_state, *hold, *keep;
    Py_ssize_t count, out_nbytes;
    int zero_given, scalar;
    long threads, generation;
    if (!PyArg_ParseTuple(args, "OOnO!O!iOOOOnpO!OpO!lOlO!O:make", &fn, &template, &count, &PyList_Type, &checks,
                          &PyType_Type, &ndarray, &alloc_kind, &alloc, &out_name, &out_shape, &out_descr, &out_nbytes,
                          &zero_given, &PyList_Type, &apart, &out_slots, &scalar, &PyDict_Type, &threads_ns,
                          &threads, &split_state, &generation, &PyList_Type, &hold, &keep))
        return NULL;
    Entry *e = PyObject_New(Entry, &EntryType);
    if (e == NULL) return NULL;
    /* everything NULL first: a failure below deallocates a half-made Entry safely */
    memset((char *)e + sizeof(PyObject), 0, sizeof(Entry) - sizeof(PyObject));
    e->fn = PyLong_AsVoidPtr(fn);
    if (e->fn == NULL) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null function"); goto fail; }
    Py_ssize_t n = PySequence_Size(template);
    if (n < 0) goto fail;
    if (n > MAX_ARGS) { PyErr_Format(PyExc_ValueError, "too many arguments (%zd > %d)", n, MAX_ARGS); goto fail; }
    e->nargs = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_GetItem(template, i);
        if (v == NULL) goto fail;
        e->args[i] = (int64_t)PyLong_AsLongLong(v);
        Py_DECREF(v);
        if (PyErr_Occurred()) goto fail;
    }
    e->count = count;
    Py_ssize_t nc = PyList_GET_SIZE(checks);
    e->checks = PyMem_Calloc((size_t)(nc ? nc : 1), sizeof(Check));
    if (e->checks == NULL) { PyErr_NoMemory(); goto fail; }
    for (Py_ssize_t c = 0; c < nc; c++) {
        Check *k = &e->checks[c];
        PyObject *name, *ref, *shape, *strides, *descr, *slots, *scipy = Py_None;
        int kind;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(checks, c), "O!O!iOOOO|O:check", &PyUnicode_Type, &name,
                              &_PyWeakref_RefType, &ref, &kind, &shape, &strides, &descr, &slots, &scipy))
            goto fail;
        e->ncheck = (int)c + 1;
        Py_INCREF(name); k->name = name;
        Py_INCREF(ref); k->ref = ref;
        Py_INCREF(descr); k->descr = descr;
        k->kind = kind;
        if (kind == ARRAY) {
            int nd = ssize_list(shape, k->shape, MAX_DIMS, "dimensions");
            if (nd < 0 || ssize_list(strides, k->strides, MAX_DIMS, "dimensions") != nd) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "shape and strides differ in length");
                goto fail;
            }
            k->nd = nd;
        }
        if (kind == SCIPY) {  /* (data, indices, indptr, converted Tensor: weak references; shape; extents) */
            if (!PyArg_ParseTuple(scipy, "O!O!O!O!OO!:scipy", &_PyWeakref_RefType, &k->data, &_PyWeakref_RefType,
                                  &k->indices, &_PyWeakref_RefType, &k->indptr, &_PyWeakref_RefType, &k->converted,
                                  &k->sshape, &PyBytes_Type, &k->extents)) {
                k->data = k->indices = k->indptr = k->converted = k->sshape = k->extents = NULL;
                goto fail;
            }
            Py_INCREF(k->data); Py_INCREF(k->indices); Py_INCREF(k->indptr);
            Py_INCREF(k->converted); Py_INCREF(k->sshape); Py_INCREF(k->extents);
        }
        if ((k->nslots = int_list(slots, k->slots, MAX_SLOTS, "slots")) < 0) goto fail;
        for (int s = 0; s < k->nslots; s++)
            if (k->slots[s] < 0 || k->slots[s] >= e->nargs) { PyErr_SetString(PyExc_ValueError, "slot out of range"); goto fail; }
    }
    KEEP(ndarray, (PyTypeObject *)ndarray);
    KEEP(alloc, alloc);
    e->alloc_kind = alloc_kind;
    if (alloc_kind != ALLOC_CALL && !PyArray_DescrCheck(out_descr)) {
        PyErr_SetString(PyExc_TypeError, "the output's dtype must be a numpy.dtype");
        goto fail;
    }
    if (out_name != Py_None) KEEP(out_name, out_name);
    if ((e->out_nd = ssize_list(out_shape, e->out_shape, MAX_DIMS, "dimensions")) < 0) goto fail;
    KEEP(out_descr, out_descr);
    e->out_nbytes = out_nbytes;
    e->zero_given = zero_given;
    KEEP(apart, apart);
    if (PyList_GET_SIZE(apart) != 1) { PyErr_SetString(PyExc_ValueError, "apart must hold one item"); goto fail; }
    if ((e->nout = int_list(out_slots, e->out_slots, MAX_SLOTS, "output slots")) < 0) goto fail;
    for (int s = 0; s < e->nout; s++)
        if (e->out_slots[s] < 0 || e->out_slots[s] >= e->nargs) { PyErr_SetString(PyExc_ValueError, "slot out of range"); goto fail; }
    e->scalar = scalar;
    KEEP(threads_ns, threads_ns);
    e->threads = threads;
    if (split_state != Py_None) {
        if (!PyList_Check(split_state) || PyList_GET_SIZE(split_state) < 1) {
            PyErr_SetString(PyExc_TypeError, "split_state must be a list"); goto fail;
        }
        KEEP(split_state, split_state);
    }
    e->generation = generation;
    if (PyList_GET_SIZE(hold) < 1) { PyErr_SetString(PyExc_ValueError, "hold must hold one item"); goto fail; }
    KEEP(hold, hold);
    KEEP(keep, keep);
    return (PyObject *)e;
fail:
    Py_DECREF(e);
    return NULL;
}

static PyObject *run(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || Py_TYPE(args[0]) != &EntryType) {
        PyErr_SetString(PyExc_TypeError, "run(entry, operands)");
        return NULL;
    }
    return entry_run((Entry *)args[0], args[1]);
}

static PyMethodDef methods[] = {
    {"make", make, METH_VARARGS, "make(...) -> Entry (runtime/native_entry.py builds the arguments)"},
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "run(entry, operands) -> the result, (status,) when the kernel failed, or MISS"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "fastentry", NULL, -1, methods};

PyMODINIT_FUNC PyInit_fastentry(void) {
    import_array();
    if (PyType_Ready(&EntryType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    MISS = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    NAME_NUM_THREADS = PyUnicode_InternFromString("_num_threads");
    NAME_LIMITED = PyUnicode_InternFromString("_limited");
    NAME_ITEM = PyUnicode_InternFromString("item");
    NAME_DATA = PyUnicode_InternFromString("data");
    NAME_INDICES = PyUnicode_InternFromString("indices");
    NAME_INDPTR = PyUnicode_InternFromString("indptr");
    NAME_SHAPE = PyUnicode_InternFromString("shape");
    if (MISS == NULL || NAME_NUM_THREADS == NULL || NAME_LIMITED == NULL || NAME_ITEM == NULL || NAME_DATA == NULL
            || NAME_INDICES == NULL || NAME_INDPTR == NULL || NAME_SHAPE == NULL)
        return NULL;
    Py_INCREF(MISS);
    if (PyModule_AddObject(m, "MISS", MISS) < 0) return NULL;
    Py_INCREF(&EntryType);
    if (PyModule_AddObject(m, "Entry", (PyObject *)&EntryType) < 0) return NULL;
    return m;
}

#pragma once
// Open MPI's C API through small functions: MPI_COMM_WORLD, the datatypes and the operations are
// macros over Open MPI's internal objects, which Swift cannot import. Every function returns an
// MPI error code (MPI_SUCCESS = 0); kd's communicators return errors instead of aborting.
#include <mpi.h>
#include <stdint.h>

/// MPI_Init_thread with MPI_THREAD_MULTIPLE (device threads may communicate); `provided` is the
/// level the library gives.
static inline int kd_mpi_init(int *provided) {
    int code = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, provided);
    if (code == MPI_SUCCESS) MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return code;
}

static inline int kd_mpi_finalize(void) { return MPI_Finalize(); }

static inline MPI_Comm kd_mpi_world(void) { return MPI_COMM_WORLD; }

static inline int kd_mpi_rank(MPI_Comm comm, int *rank) { return MPI_Comm_rank(comm, rank); }
static inline int kd_mpi_size(MPI_Comm comm, int *size) { return MPI_Comm_size(comm, size); }

/// The ranks of `comm` with the same `color`, ordered by `key`.
static inline int kd_mpi_split(MPI_Comm comm, int color, int key, MPI_Comm *out) {
    int code = MPI_Comm_split(comm, color, key, out);
    if (code == MPI_SUCCESS) MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
    return code;
}

/// Ends every rank of the job with `code`.
static inline void kd_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

static inline int kd_mpi_processor_name(char *name, int *length) { return MPI_Get_processor_name(name, length); }

static inline int kd_mpi_error_string(int code, char *text, int *length) { return MPI_Error_string(code, text, length); }

/// Rank r's `count` floats from offset r·count of `send` go to rank r; `receive` gets rank s's
/// share at offset s·count.
static inline int kd_mpi_alltoall_floats(MPI_Comm comm, const float *send, float *receive, int count) {
    return MPI_Alltoall(send, count, MPI_FLOAT, receive, count, MPI_FLOAT, comm);
}

/// Every rank's `count` bytes, in rank order, on every rank.
static inline int kd_mpi_allgather_bytes(MPI_Comm comm, const void *send, void *receive, int count) {
    return MPI_Allgather(send, count, MPI_BYTE, receive, count, MPI_BYTE, comm);
}

static inline int kd_mpi_broadcast_bytes(MPI_Comm comm, void *buffer, int count, int root) {
    return MPI_Bcast(buffer, count, MPI_BYTE, root, comm);
}

static inline int kd_mpi_barrier(MPI_Comm comm) { return MPI_Barrier(comm); }

static inline int kd_mpi_send_bytes(MPI_Comm comm, const void *buffer, int count, int destination, int tag) {
    return MPI_Send(buffer, count, MPI_BYTE, destination, tag, comm);
}

/// Starts sending `count` bytes; the buffer must stay as it is until `kd_mpi_wait` on `request` returns.
static inline int kd_mpi_isend_bytes(MPI_Comm comm, const void *buffer, int count, int destination, int tag,
                                     MPI_Request *request) {
    return MPI_Isend(buffer, count, MPI_BYTE, destination, tag, comm, request);
}

static inline int kd_mpi_wait(MPI_Request *request) { return MPI_Wait(request, MPI_STATUS_IGNORE); }

static inline int kd_mpi_receive_bytes(MPI_Comm comm, void *buffer, int count, int source, int tag) {
    return MPI_Recv(buffer, count, MPI_BYTE, source, tag, comm, MPI_STATUS_IGNORE);
}

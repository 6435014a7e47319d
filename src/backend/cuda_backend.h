/* cuda_backend.h - what the CUDA backend (cuda/ops_cuda.cu) offers beyond ops.h.
 *
 * The ops of ops.h return void, so a CUDA failure inside one (a failed launch, an
 * out-of-memory scratch buffer, an asynchronous kernel fault, an embedding id out of
 * range) cannot be returned.  The backend records the FIRST such failure (file, line,
 * the call, CUDA's message) and from then on every op is a no-op (download fills its
 * host buffer with zeros) until ldm_cuda_check() reports it.  Callers running a model
 * on ldm_backend_cuda() call ldm_cuda_check() after each forward pass (or after
 * downloading the result) and treat -1 as the failure of that pass.
 *
 * In a build without CUDA these are inline no-ops, so callers need no #ifdef.
 */
#ifndef LDM_CUDA_BACKEND_H
#define LDM_CUDA_BACKEND_H

#include "format/bundle.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef LDM_CUDA
/* Wait for the device, then: 0 if no CUDA op failed since the last call; else -1 with
 * ldm_last_error() set to the first failure, which is then cleared (after a device
 * fault the CUDA context stays broken and later ops fail again). */
int ldm_cuda_check(void);
/* Free the device copy made by prepare_weight (w->dev becomes NULL).  Weights still
 * prepared at exit are reclaimed with the process. */
void ldm_cuda_release_weight(ldm_tensor *w);
#else
static inline int ldm_cuda_check(void) { return 0; }
static inline void ldm_cuda_release_weight(ldm_tensor *w) { (void)w; }
#endif

#ifdef __cplusplus
}
#endif

#endif

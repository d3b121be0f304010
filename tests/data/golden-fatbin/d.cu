// A hand-tuned kernel built for one more arch only, as torch ships a few.
__global__ void mul_d(float *a, float b) { a[threadIdx.x] *= b; }
void launch_d(float *a) { mul_d<<<1, 32>>>(a, 2.0f); }

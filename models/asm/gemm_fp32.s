; fp32 GEMM: C[M, N] = A[M, K] @ B[K, N], all fp32, tiled but not overlapped.
;
; For each TM x TN tile of C: DMA the TM x K panel of A and the K x TN panel of B into the
; scratchpad, run one load_weights/matmul pair per ARRAY_ROWS x ARRAY_COLS tile of the B
; panel (summing over K in the accumulator), then store the C tile. Unlike gemm_int8.s,
; every tile waits for the previous one, and the matrix unit joins the chain with `sync`
; instructions rather than waits on its first and last instructions: simpler to read,
; and the fences cost nothing when nothing overlaps anyway.
;
; The matrix unit sums each ARRAY_ROWS-long slice of K in float64 and rounds it once to
; fp32, so the result differs from an fp32 numpy matmul only by the rounding of K /
; ARRAY_ROWS partial sums. M, N and K must be multiples of TM, TN and ARRAY_ROWS, and the
; two panels must fit the scratchpad: (TM + TN) * K * 4 <= SPAD_BYTES.

.equ M, 32
.equ K, 64
.equ N, 48

.equ TM, 2 * ARRAY_ROWS
.equ TN, 2 * ARRAY_COLS
.equ MT, M // TM
.equ NT, N // TN
.equ KR, K // ARRAY_ROWS
.equ NC, TN // ARRAY_COLS

; The sizes must be whole, non-zero numbers of tiles.
.if M % TM + N % TN + K % ARRAY_ROWS + (MT == 0) + (NT == 0) + (KR == 0)
  .error "the sizes must be non-zero multiples of the tile sizes"
.endif

.equ A_PANEL, 0                     ; TM x K
.equ B_PANEL, TM * K * 4            ; K x TN
.equ C_TILE, ACC_BASE               ; TM x TN

.equ A_DRAM, 0
.equ B_DRAM, M * K * 4
.equ C_DRAM, (M * K + K * N) * 4

.equ FREE, 1                        ; store -> load: the previous C tile is out
.equ LOADED, 2                      ; load -> matrix: both panels are in
.equ DONE, 3                        ; matrix -> store: the C tile is complete

.input  A dram=A_DRAM shape=(M, K) dtype=f32
.input  B dram=B_DRAM shape=(K, N) dtype=f32
.output C dram=C_DRAM shape=(M, N) dtype=f32

sync engine=store signal=FREE
.for m in 0..MT
.for n in 0..NT
  dma_load esize=4 dram=A_DRAM + m * TM * K * 4 local=A_PANEL n0=K n1=TM ds1=K ls1=K wait=FREE
  dma_load esize=4 dram=B_DRAM + n * TN * 4 local=B_PANEL n0=TN n1=K ds1=N ls1=TN signal=LOADED
  sync engine=matrix wait=LOADED
  .for kr in 0..KR
  .for nc in 0..NC
    load_weights dtype=f32 addr=B_PANEL + (kr * ARRAY_ROWS * TN + nc * ARRAY_COLS) * 4 k=ARRAY_ROWS n=ARRAY_COLS stride=TN
    ; overwrite C on the first slice of K, add to it on the others
    matmul dtype=f32 accumulate=1 - (KR - kr) // KR a=A_PANEL + kr * ARRAY_ROWS * 4 a_rs=K m=TM c=C_TILE + nc * ARRAY_COLS * 4 c_rs=TN
  .endfor
  .endfor
  sync engine=matrix signal=DONE
  dma_store esize=4 dram=C_DRAM + (m * TM * N + n * TN) * 4 local=C_TILE n0=TN n1=TM ds1=N ls1=TN wait=DONE signal=FREE
.endfor
.endfor
end

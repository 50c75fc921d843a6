; Softmax over each row of an fp32 matrix: Y[r, :] = exp(X[r, :] - max_r) / sum_r.
;
; Rows are processed TR at a time, in place in the block's scratchpad buffer:
;   vrmax   MAX[r] = max over the row                    (one result per row, dst_rs = 1)
;   vsub    x = x - MAX[r]                               (b_rs = 1, b_cs = 0: MAX broadcast along the row)
;   vexp    x = exp(x)
;   vrsum   SUM[r] = sum over the row
;   vrecip  SUM[r] = 1 / SUM[r]
;   vmul    x = x * SUM[r]                               (broadcast as for vsub)
; Subtracting the row max first keeps exp from overflowing. Blocks alternate between two
; buffers so the load of block i + 1 and the store of block i - 1 overlap the vector work
; on block i:
;   FREE + s    store -> load     buffer s has been written out (starts with one token)
;   LOADED + s  load -> vector    buffer s holds a block of X
;   DONE + s    vector -> store   buffer s holds a block of Y
; MAX and SUM are shared by both buffers: only the in-order vector unit touches them.
; M must be a multiple of TR.

.equ M, 32
.equ N, 40
.equ TR, ARRAY_ROWS

.equ MT, M // TR

; The sizes must be whole, non-zero numbers of tiles.
.if M % TR + (MT == 0)
  .error "the sizes must be non-zero multiples of the tile sizes"
.endif
.equ BLOCK, TR * N * 4

.equ X_BUF, 0                       ; two blocks
.equ MAX_BUF, 2 * BLOCK
.equ SUM_BUF, MAX_BUF + TR * 4

.equ X_DRAM, 0
.equ Y_DRAM, M * N * 4

.equ FREE, 1
.equ LOADED, 3
.equ DONE, 5

.input  X dram=X_DRAM shape=(M, N) dtype=f32
.output Y dram=Y_DRAM shape=(M, N) dtype=f32

.for s in 0..2
  sync engine=store signal=FREE + s
.endfor

.for i in 0..MT
  .equ S, i % 2
  .equ BUF, X_BUF + S * BLOCK
  dma_load esize=4 dram=X_DRAM + i * BLOCK local=BUF n0=TR * N wait=FREE + S signal=LOADED + S
  vrmax dtype=f32 dst=MAX_BUF dst_rs=1 a=BUF a_rs=N rows=TR cols=N wait=LOADED + S
  vsub dtype=f32 dst=BUF dst_rs=N a=BUF a_rs=N b=MAX_BUF b_rs=1 b_cs=0 rows=TR cols=N
  vexp dtype=f32 dst=BUF dst_rs=N a=BUF a_rs=N rows=TR cols=N
  vrsum dtype=f32 dst=SUM_BUF dst_rs=1 a=BUF a_rs=N rows=TR cols=N
  vrecip dtype=f32 dst=SUM_BUF dst_rs=1 a=SUM_BUF a_rs=1 rows=TR cols=1
  vmul dtype=f32 dst=BUF dst_rs=N a=BUF a_rs=N b=SUM_BUF b_rs=1 b_cs=0 rows=TR cols=N signal=DONE + S
  dma_store esize=4 dram=Y_DRAM + i * BLOCK local=BUF n0=TR * N wait=DONE + S signal=FREE + S
.endfor
end

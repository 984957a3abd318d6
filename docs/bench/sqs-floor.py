# Usage: python docs/bench/sqs-floor.py ENDPOINT  (boto3, e.g. from ~/.cache/conductor-aws)
# The emulator's own ceiling: receive (10 at a time, 2 threads) and delete 2,000 messages, no database.
import boto3, sys, time, threading
ep = sys.argv[1]
sqs = boto3.client("sqs", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
url = sqs.create_queue(QueueName=f"floor-{int(time.time()*1000)}")["QueueUrl"]
N = 2000
for i in range(0, N, 10):
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": f"m{i+j}"} for j in range(10)])
done = [0]; lock = threading.Lock()
def worker():
    c = boto3.client("sqs", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    while True:
        with lock:
            if done[0] >= N: return
        r = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not r: continue
        c.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in enumerate(r)])
        with lock: done[0] += len(r)
t0 = time.time()
ts = [threading.Thread(target=worker) for _ in range(2)]
[t.start() for t in ts]; [t.join() for t in ts]
dt = time.time() - t0
print(f"{ep}: received+deleted {done[0]} in {dt:.2f} s = {done[0]/dt:.0f} messages/s")

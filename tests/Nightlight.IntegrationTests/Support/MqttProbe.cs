using System.Buffers;
using System.Collections.Concurrent;
using System.Text;
using MQTTnet;
using MQTTnet.Formatter;
using MQTTnet.Protocol;

namespace Nightlight.Tests.Support;

/// <summary>The broker answered CONNECT with a refusal (MQTTnet 5 returns it rather than throwing).</summary>
public sealed class ConnectRefusedException(MqttClientConnectResultCode resultCode) : Exception($"connection refused: {resultCode}")
{
    public MqttClientConnectResultCode ResultCode { get; } = resultCode;
}

/// <summary>An MQTTnet 5 client that records what it receives: a test's eyes on a broker.</summary>
public sealed class MqttProbe : IAsyncDisposable
{
    readonly IMqttClient _client;
    readonly ConcurrentQueue<(string Topic, string Payload, bool Retained)> _received = new();
    readonly SemaphoreSlim _changed = new(0);

    MqttProbe(IMqttClient client)
    {
        _client = client;
        _client.ApplicationMessageReceivedAsync += e =>
        {
            _received.Enqueue((e.ApplicationMessage.Topic, Encoding.UTF8.GetString(e.ApplicationMessage.Payload.ToArray()), e.ApplicationMessage.Retain));
            _changed.Release();
            return Task.CompletedTask;
        };
    }

    public IReadOnlyCollection<(string Topic, string Payload, bool Retained)> Received => _received;

    public IMqttClient Client => _client;

    public static async Task<MqttProbe> ConnectAsync(int port, MqttProtocolVersion version = MqttProtocolVersion.V311, string? clientId = null, string host = "127.0.0.1",
        Action<MqttClientOptionsBuilder>? configure = null)
    {
        var client = new MqttClientFactory().CreateMqttClient();
        var probe = new MqttProbe(client);
        var builder = new MqttClientOptionsBuilder().WithTcpServer(host, port).WithProtocolVersion(version)
            .WithClientId(clientId ?? "probe-" + Guid.NewGuid().ToString("N")[..8]).WithTimeout(TimeSpan.FromSeconds(10));
        configure?.Invoke(builder);
        MqttClientConnectResult result;
        try
        {
            result = await client.ConnectAsync(builder.Build());
        }
        catch
        {
            client.Dispose();
            throw;
        }
        if (result.ResultCode != MqttClientConnectResultCode.Success)
        {
            client.Dispose();
            throw new ConnectRefusedException(result.ResultCode);
        }
        return probe;
    }

    /// <summary>Connects with a user name and password; the broker's refusal surfaces as <see cref="ConnectRefusedException"/>.</summary>
    public static Task<MqttProbe> ConnectAsAsync(int port, string clientId, string? userName, string? password, MqttProtocolVersion version = MqttProtocolVersion.V500) =>
        ConnectAsync(port, version, clientId, configure: b =>
        {
            if (userName is not null)
            {
                b.WithCredentials(userName, password ?? "");
            }
        });

    public static async Task<MqttProbe> ConnectWebSocketAsync(string uri, MqttProtocolVersion version = MqttProtocolVersion.V500)
    {
        var client = new MqttClientFactory().CreateMqttClient();
        var probe = new MqttProbe(client);
        var options = new MqttClientOptionsBuilder().WithWebSocketServer(o => o.WithUri(uri)).WithProtocolVersion(version)
            .WithClientId("probe-ws-" + Guid.NewGuid().ToString("N")[..8]).WithTimeout(TimeSpan.FromSeconds(10)).Build();
        await client.ConnectAsync(options);
        return probe;
    }

    public async Task SubscribeAsync(string filter, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce)
    {
        await _client.SubscribeAsync(new MqttClientSubscribeOptionsBuilder().WithTopicFilter(filter, qos).Build());
    }

    public Task PublishAsync(string topic, string payload, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce, bool retain = false) =>
        PublishAsync(topic, Encoding.UTF8.GetBytes(payload), qos, retain);

    public async Task PublishAsync(string topic, byte[] payload, MqttQualityOfServiceLevel qos = MqttQualityOfServiceLevel.AtMostOnce, bool retain = false)
    {
        await _client.PublishAsync(new MqttApplicationMessageBuilder().WithTopic(topic).WithPayload(payload)
            .WithQualityOfServiceLevel(qos).WithRetainFlag(retain).Build());
    }

    /// <summary>Waits until <paramref name="count"/> received messages match.</summary>
    public async Task<IReadOnlyList<(string Topic, string Payload, bool Retained)>> WaitForAsync(
        Func<(string Topic, string Payload, bool Retained), bool> match, int count = 1, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        while (true)
        {
            var found = _received.Where(match).ToList();
            if (found.Count >= count)
            {
                return found;
            }
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"waited for {count} matching messages, got {found.Count}; all received: {string.Join(", ", _received.Select(m => $"{m.Topic}={m.Payload}"))}");
            }
            await _changed.WaitAsync(TimeSpan.FromMilliseconds(200));
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_client.IsConnected)
        {
            await _client.DisconnectAsync();
        }
        _client.Dispose();
    }
}

using Nightlight.Tests.Support;

namespace Nightlight.Tests.Broker;

/// <summary>
/// What the black-box broker tests share: the broker they run against (a subclass per broker, as the storage contract
/// tests have one per database), one broker process per test, and raw connections to it.
/// </summary>
public abstract class BrokerContract(BrokerKind kind, Wire wire)
{
    /// <summary>How long a test listens to make sure that nothing (more) arrives.</summary>
    protected static readonly TimeSpan Quiet = TimeSpan.FromMilliseconds(300);

    protected BrokerKind Kind { get; } = kind;

    protected Wire Wire { get; } = wire;

    protected Task<BrokerUnderTest> StartBrokerAsync(BrokerSetup? setup = null) => BrokerUnderTest.StartAsync(Kind, setup);

    protected Task<WireClient> ConnectAsync(BrokerUnderTest broker, string clientId, bool clean = true, int keepAlive = 60, Will? will = null,
        Props? properties = null, bool sessionPresent = false) =>
        WireClient.ConnectAsync(broker.Port, Wire, clientId, clean, keepAlive, will, properties, sessionPresent);

    protected Task<WireClient> OpenAsync(BrokerUnderTest broker, string name) => WireClient.OpenAsync(broker.Port, Wire, name);
}
